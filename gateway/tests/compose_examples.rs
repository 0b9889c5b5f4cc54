//! The docker-compose examples in `image/compose/` use only variables the container entrypoint
//! understands, with values it accepts.

use std::collections::BTreeMap;
use std::path::Path;

/// The `- KEY=VALUE` entries of the `environment:` lists in a compose file.
fn environment(yaml: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut inside = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text == "environment:" {
            inside = Some(indent);
            continue;
        }
        match inside {
            Some(base) if indent > base && text.starts_with("- ") => {
                if let Some((k, v)) = text[2..].split_once('=') {
                    env.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            Some(base) if indent <= base && !text.is_empty() => inside = None,
            _ => {}
        }
    }
    env
}

#[test]
fn compose_examples_are_valid_entrypoint_input() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/compose");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("image/compose") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let env = environment(&text);
        assert!(
            env.contains_key("TS_AUTHKEY"),
            "{}: {env:?}",
            path.display()
        );
        let plan = tailgate::containerboot::plan(&env)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            plan.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            plan.warnings
        );
        assert!(
            text.contains("image: tailgate:latest"),
            "{}",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 2, "sidecar and subnet-router examples");
}
