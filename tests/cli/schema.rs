//! The committed JSON Schema is generated from the Rust types and must be fresh.

use crate::harness::Env;

#[test]
fn committed_schema_is_fresh() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed =
        std::fs::read_to_string(root.join("schemas/manifest.schema.json")).unwrap_or_default();
    let generated = Env::new().demix(&["schema"]).ok().stdout();
    assert!(
        committed == generated,
        "schemas/manifest.schema.json is stale: run `cargo run -q -- schema > schemas/manifest.schema.json`"
    );
}

#[test]
fn shipped_workflows_name_the_schema_and_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for e in std::fs::read_dir(root.join("workflows")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            n += 1;
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../schemas/manifest.schema.json"),
                "{} does not name the schema",
                p.display()
            );
            let env = Env::new();
            env.demix(&["check", p.to_str().unwrap()]).ok();
        }
    }
    assert!(n > 0);
}
