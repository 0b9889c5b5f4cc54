//! [`counter_enum!`]: the counter enums that index the XDP programs' per-CPU counter arrays.

/// Defines a `#[repr(u32)]` counter enum from its variants, each with its explicit index (the
/// slot in the per-CPU array both sides use) and its stable snake_case name, and gives it
/// `COUNT`, `ALL`, `index`, `from_index` and `name`.
///
/// The variants must be listed in index order with dense indices from 0; a compile-time check
/// rejects any other listing.
macro_rules! counter_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $index:literal => $label:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant = $index,
            )+
        }

        impl $name {
            /// Number of counters (`max_entries` of the per-CPU array they index).
            pub const COUNT: u32 = [$($name::$variant),+].len() as u32;

            /// All counters, in index order.
            pub const ALL: [$name; Self::COUNT as usize] = [$($name::$variant),+];

            /// Index in the counters map.
            pub const fn index(self) -> u32 {
                self as u32
            }

            /// The counter at `index`, if any.
            pub const fn from_index(index: u32) -> Option<Self> {
                if index < Self::COUNT {
                    Some(Self::ALL[index as usize])
                } else {
                    None
                }
            }

            /// Stable snake_case name (status output, metric labels, JSON field names).
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }

        // `ALL[i]` must be the counter with index `i`, so that `from_index` is right.
        const _: () = {
            let mut i = 0;
            while i < $name::ALL.len() {
                assert!(
                    $name::ALL[i] as usize == i,
                    "counter indices must be dense and in order"
                );
                i += 1;
            }
        };
    };
}

pub(crate) use counter_enum;

#[cfg(test)]
mod tests {
    use crate::{LanCounter, StunCounter, TunCounter, WanCounter};

    /// Indices round-trip through `from_index`, nothing lies past `COUNT`, and names are
    /// unique.
    macro_rules! assert_counters {
        ($($enum:ident),+) => {$(
            for (i, c) in $enum::ALL.iter().enumerate() {
                assert_eq!(c.index(), i as u32);
                assert_eq!($enum::from_index(i as u32), Some(*c));
                assert!(!c.name().is_empty());
                for later in &$enum::ALL[i + 1..] {
                    assert_ne!(c.name(), later.name(), stringify!($enum));
                }
            }
            assert_eq!($enum::ALL.len(), $enum::COUNT as usize);
            assert_eq!($enum::from_index($enum::COUNT), None);
        )+};
    }

    #[test]
    fn counter_indices_are_dense_round_trip_and_names_are_unique() {
        assert_counters!(StunCounter, WanCounter, TunCounter, LanCounter);
    }

    #[test]
    fn indices_are_the_map_slots() {
        assert_eq!(StunCounter::PassedOther as u32, 6);
        assert_eq!(WanCounter::PassStun as u32, 12);
        assert_eq!(TunCounter::DropError as u32, 13);
        assert_eq!(LanCounter::RedirectedXsk as u32, 9);
        assert_eq!(core::mem::size_of::<WanCounter>(), 4);
    }
}
