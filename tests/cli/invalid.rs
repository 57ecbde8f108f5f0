//! Every invalid manifest gets a diagnostic at the offending node, exit code 2, and
//! nothing is written to the store.

use crate::harness::Env;

#[test]
fn invalid_manifests_point_at_their_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/invalid");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "the corpus has {} cases", cases.len());
    let mut transcript = String::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(case).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# error: "))
            .unwrap_or_else(|| panic!("{name}: no `# error:` line"));
        let (loc, message) = expect.split_at(expect.find(": ").unwrap());
        let message = &message[2..];
        let env = Env::new();
        env.write(&name, &text);
        for cmd in ["check", "run", "status"] {
            let r = env.demix(&[cmd, &name]);
            assert_eq!(
                r.code(),
                2,
                "{name} ({cmd}) should fail with 2:\n{}",
                r.stderr()
            );
            let err = r.stderr();
            assert!(
                err.contains(&format!("[{name}:{loc}]")),
                "{name} ({cmd}): expected location {loc} in:\n{err}"
            );
            assert!(
                err.contains(message),
                "{name} ({cmd}): expected `{message}` in:\n{err}"
            );
            assert!(!err.contains("panicked"), "{name}: {err}");
        }
        assert!(
            env.store_files().is_empty(),
            "{name}: wrote to the store: {:?}",
            env.store_files()
        );
        transcript.push_str(&format!(
            "==> {name}\n{}\n",
            env.demix(&["check", &name]).stderr()
        ));
    }
    insta::assert_snapshot!("invalid_manifests", transcript);
}

#[test]
fn missing_manifest_is_a_clear_error() {
    let env = Env::new();
    let r = env.demix(&["run", "nope.yaml"]).fails(2);
    assert!(
        r.stderr().contains("cannot read manifest nope.yaml"),
        "{}",
        r.stderr()
    );
    let r = env.demix(&["status"]).fails(2);
    assert!(r.stderr().contains("no manifest given"), "{}", r.stderr());
}

#[test]
fn bad_flags_are_usage_errors() {
    let env = Env::new();
    env.write(
        "m.yaml",
        "version: 1\nname: m\nsteps:\n  - {id: a, kind: command, run: [true]}\n",
    );
    let r = env.demix(&["run", "m.yaml", "--target", "b"]).fails(2);
    assert!(
        r.stderr().contains("--target `b` is not a step"),
        "{}",
        r.stderr()
    );
    env.demix(&["run", "m.yaml", "--jobs", "0"]).fails(2);
    assert!(env.store_files().is_empty());
}
