//! A compose project built end to end on the real daemon: `extends` (same file and `file:`),
//! one image shared by two services with a third built `FROM` it, an `include`d project with
//! its own `.env`, and a `dockerfile_inline`; the images in the registry and the files the
//! builds wrote are checked, then a second run skips everything.

mod support;

use std::path::Path;

use support::*;

fn project(dir: &Path, base: &str) {
    write(
        &dir.join("compose.yaml"),
        r#"
include:
  - lib/compose.yaml
x-push: &push
  x-bk-build: {push: true}
services:
  base:
    image: ${REG}/${NS}/base:1
    build:
      context: app
      args: {WHO: base, EXTRA: from-base}
      <<: *push
  child:
    extends: base
    image: ${REG}/${NS}/child:1
    build:
      args: {WHO: child}
      x-bk-build:
        push: false
        outputs: ["type=local,dest=out/child"]
  far:
    extends: {file: common/base.yaml, service: common}
    image: ${REG}/${NS}/far:1
  web:
    image: ${REG}/${NS}/shared:1
    build: &shared
      context: shared
      <<: *push
  worker:
    image: ${REG}/${NS}/shared:1
    build: *shared
  third:
    image: ${REG}/${NS}/third:1
    build:
      context: third
      args: {BASE_IMAGE: "${REG}/${NS}/shared:1"}
      x-bk-build: {outputs: ["type=local,dest=out/third"]}
  inline:
    image: ${REG}/${NS}/inline:1
    build:
      context: app
      dockerfile_inline: |
        FROM BASE_REF
        COPY marker.txt /inline.txt
      x-bk-build: {outputs: ["type=local,dest=out/inline"]}
"#
        .replace("BASE_REF", base),
    );
    write(
        &dir.join("app/Dockerfile"),
        format!("FROM {base}\nARG WHO\nARG EXTRA\nRUN echo \"$WHO $EXTRA\" > /who.txt\n"),
    );
    write(&dir.join("app/marker.txt"), "inline\n");
    write(
        &dir.join("common/base.yaml"),
        "services:\n  common:\n    build:\n      context: ctx\n      args: {FAR: far-away}\n      x-bk-build:\n        outputs: [\"type=local,dest=../out/far\"]\n",
    );
    write(
        &dir.join("common/ctx/Dockerfile"),
        format!("FROM {base}\nARG FAR\nRUN echo \"$FAR\" > /far.txt\n"),
    );
    write(
        &dir.join("shared/Dockerfile"),
        format!("FROM {base}\nRUN echo shared > /shared.txt\n"),
    );
    write(
        &dir.join("third/Dockerfile"),
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN cat /shared.txt > /third.txt\n",
    );
    write(
        &dir.join("lib/compose.yaml"),
        "services:\n  lib:\n    image: ${REG}/${NS}/lib:1\n    build:\n      context: .\n      args: {LIBV: \"${LIBVAR:-unset}\"}\n      x-bk-build:\n        outputs: [\"type=local,dest=out\"]\n",
    );
    write(&dir.join("lib/.env"), "LIBVAR=from-lib-env\n");
    write(
        &dir.join("lib/Dockerfile"),
        format!("FROM {base}\nARG LIBV\nRUN echo \"$LIBV\" > /lib.txt\n"),
    );
    write(&dir.join("lib/.dockerignore"), "out\n");
}

fn bake(dir: &Path, ns: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = bk();
    cmd.current_dir(dir)
        .args(["bake", "--progress", "plain"])
        .args(args)
        .env("REG", registry())
        .env("NS", ns);
    run(&mut cmd)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_compose_project_with_extends_include_a_shared_image_and_an_inline_dockerfile_builds() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let ns = unique("compose-e2e");
    project(dir, &base_image());

    let out = bake(dir, &ns, &[]);
    assert!(out.status.success(), "bake failed:\n{}", stderr(&out));

    // extends in the same file: the child's own arg wins, the parent's other arg stays, and
    // it is built from the parent's context.
    assert_eq!(read(&dir.join("out/child/who.txt")), "child from-base\n");
    // extends from another file: that file's relative paths start at its own directory.
    assert_eq!(read(&dir.join("out/far/far.txt")), "far-away\n");
    // include: the included project has its own directory and .env.
    assert_eq!(read(&dir.join("lib/out/lib.txt")), "from-lib-env\n");
    // One image for web and worker, and third built on exactly that image.
    assert_eq!(read(&dir.join("out/third/third.txt")), "shared\n");
    let shared = manifest_digest(&format!("{ns}/shared"), "1").expect("shared image pushed");
    assert!(manifest_digest(&format!("{ns}/base"), "1").is_some());
    // dockerfile_inline is the Dockerfile, with the service's context.
    assert_eq!(read(&dir.join("out/inline/inline.txt")), "inline\n");

    // Nothing changed: nothing is built, and the shared tag still holds the same image.
    let again = bake(dir, &ns, &[]);
    assert!(
        again.status.success(),
        "second bake failed:\n{}",
        stderr(&again)
    );
    let table = stderr(&again);
    for t in [
        "base", "child", "far", "web", "worker", "third", "lib", "inline",
    ] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .unwrap_or_else(|| panic!("no summary row for {t}:\n{table}"));
        assert!(
            row.contains("skipped"),
            "{t} was not skipped: {row}\n{table}"
        );
    }
    assert_eq!(manifest_digest(&format!("{ns}/shared"), "1"), Some(shared));
}
