//! One transport keypair: ChaCha20-Poly1305 (ring) in caller buffers, counters, replay window.
//!
//! This is the hot path: no allocation, one copy into the destination, then an in-place seal
//! or open.

use std::time::Instant;

use ring::aead::{Aad, LessSafeKey};

use super::crypto::{aead_key, nonce};
use super::error::WgError;
use super::messages::{
    write_data_header, DataPacket, AEAD_TAG_LEN, DATA_HEADER_LEN, PADDING_MULTIPLE,
};
use super::noise::TransportKeys;
use super::replay::{ReplayWindow, REJECT_AFTER_MESSAGES};
use super::timers::REJECT_AFTER_TIME;

/// A transport session (keypair).
pub(crate) struct Session {
    /// Our index: data packets for this session carry it as receiver index.
    pub(crate) local_index: u32,
    /// The peer's index: we put it in the data packets we send.
    pub(crate) remote_index: u32,
    /// When the handshake derived this session.
    pub(crate) created: Instant,
    /// Whether we initiated the handshake that derived it.
    pub(crate) initiator: bool,
    send_key: LessSafeKey,
    recv_key: LessSafeKey,
    send_counter: u64,
    replay: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .field("send_counter", &self.send_counter)
            .finish_non_exhaustive()
    }
}

/// Length of a data message carrying a `payload_len`-byte packet (after padding).
#[inline]
pub fn data_message_len(payload_len: usize) -> usize {
    DATA_HEADER_LEN + payload_len.next_multiple_of(PADDING_MULTIPLE) + AEAD_TAG_LEN
}

impl Session {
    pub(crate) fn new(
        local_index: u32,
        keys: &TransportKeys,
        initiator: bool,
        now: Instant,
    ) -> Session {
        Session {
            local_index,
            remote_index: keys.remote_index,
            created: now,
            initiator,
            send_key: aead_key(&keys.send),
            recv_key: aead_key(&keys.recv),
            send_counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    /// Messages sent so far (the next nonce).
    pub(crate) fn send_counter(&self) -> u64 {
        self.send_counter
    }

    /// Whether the session may still encrypt at `now` (younger than REJECT_AFTER_TIME and not
    /// out of nonces).
    pub(crate) fn can_send(&self, now: Instant) -> bool {
        self.send_counter < REJECT_AFTER_MESSAGES && !self.expired(now)
    }

    /// Whether the session is older than REJECT_AFTER_TIME.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= REJECT_AFTER_TIME
    }

    /// Encrypts `payload` (an IP packet, or empty for a keepalive) into `dst` as a complete
    /// data message; returns its length.
    #[inline]
    pub(crate) fn encrypt(&mut self, payload: &[u8], dst: &mut [u8]) -> Result<usize, WgError> {
        if data_message_len(payload.len()) > dst.len() {
            return Err(WgError::DestinationBufferTooSmall);
        }
        let body = dst
            .get_mut(DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len())
            .ok_or(WgError::DestinationBufferTooSmall)?;
        body.copy_from_slice(payload);
        self.seal(dst, payload.len())
    }

    /// Encrypts the packet already at `buf[16..16 + payload_len]`, padding and appending the
    /// tag within `buf`; returns the message length.
    #[inline]
    pub(crate) fn seal(&mut self, buf: &mut [u8], payload_len: usize) -> Result<usize, WgError> {
        let len = data_message_len(payload_len);
        let msg = buf
            .get_mut(..len)
            .ok_or(WgError::DestinationBufferTooSmall)?;
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(WgError::SessionExpired);
        }
        let (header, rest) = msg.split_at_mut(DATA_HEADER_LEN);
        let (body, tag_out) = rest.split_at_mut(rest.len() - AEAD_TAG_LEN);
        body[payload_len..].fill(0);
        let tag = self
            .send_key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), body)
            .map_err(|_| WgError::DestinationBufferTooSmall)?;
        tag_out.copy_from_slice(tag.as_ref());
        if let Ok(h) = <&mut [u8; DATA_HEADER_LEN]>::try_from(header) {
            write_data_header(h, self.remote_index, counter);
        }
        self.send_counter = counter + 1;
        Ok(len)
    }

    /// Decrypts a data packet for this session into `dst`; returns the padded plaintext.
    /// The counter is recorded only after the tag verified.
    #[inline]
    pub(crate) fn decrypt<'d>(
        &mut self,
        pkt: &DataPacket<'_>,
        dst: &'d mut [u8],
    ) -> Result<&'d mut [u8], WgError> {
        if !self.replay.check(pkt.counter) {
            return Err(WgError::Replayed);
        }
        let n = pkt.encrypted.len();
        let buf = dst.get_mut(..n).ok_or(WgError::DestinationBufferTooSmall)?;
        buf.copy_from_slice(pkt.encrypted);
        let plain = self
            .recv_key
            .open_in_place(nonce(pkt.counter), Aad::empty(), buf)
            .map_err(|_| WgError::DecryptionFailed)?;
        if !self.replay.check_and_update(pkt.counter) {
            return Err(WgError::Replayed);
        }
        Ok(plain)
    }

    #[cfg(test)]
    pub(crate) fn set_send_counter(&mut self, c: u64) {
        self.send_counter = c;
    }
}
