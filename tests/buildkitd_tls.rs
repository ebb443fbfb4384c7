//! `--addr tcp://` with `--tlscacert/--tlscert/--tlskey` (or `--tlsdir`): the standalone
//! buildkitd path of the TLS code it shares with Docker Engine. No buildkitd runs here, so the
//! daemon is a gRPC server over mutual TLS with the test environment's server certificate
//! (ALPN h2, client certificate required, as buildkitd with `--tlscacert`). It serves no
//! Control service: BuildKit's `Unimplemented` answer is what a daemon older than v0.11
//! gives, which bk-build accepts, so `bk-build info` succeeds exactly when TLS does.

mod support;

use std::path::Path;

use support::*;

/// Starts the server on a port of its own; it runs as long as the returned runtime.
fn grpc_tls_server() -> (tokio::runtime::Runtime, u16) {
    let t = tls_engine();
    let read = |p: &Path| std::fs::read(p).unwrap();
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read(&t.server_certs.join("cert.pem")),
            read(&t.server_certs.join("key.pem")),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(read(
            &t.server_certs.join("ca.pem"),
        )));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (rt, port)
}

fn fails_saying(cmd: &mut std::process::Command, needles: &[&str]) {
    let out = run(cmd);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected a failure: {err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    assert!(!err.contains("Unknown error: transport error"), "{err}");
}

#[test]
fn mutual_tls_with_flags_or_a_directory_and_its_errors() {
    let (_rt, port) = grpc_tls_server();
    let addr = format!("tcp://127.0.0.1:{port}");
    let t = tls_engine();
    let certs = &t.certs;

    let out = run_ok(
        bk().args(["--addr", &addr, "--tlscacert"])
            .arg(certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(certs.join("cert.pem"))
            .arg("--tlskey")
            .arg(certs.join("key.pem"))
            .arg("info"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&addr));
    run_ok(
        bk().args(["--addr", &addr, "--tlsdir"])
            .arg(certs)
            .arg("info"),
    );

    // No client certificate.
    fails_saying(
        bk().args(["--addr", &addr, "--tlscacert"])
            .arg(certs.join("ca.pem"))
            .arg("info"),
        &["requires a client certificate", "--tlscert", "--tlskey"],
    );
    // No TLS at all.
    fails_saying(
        bk().args(["--addr", &addr, "info"]),
        &["--tlscacert", "--tlscert", "--tlskey"],
    );
    // A client certificate from another CA.
    let foreign = tempfile::tempdir().unwrap();
    foreign_certs(foreign.path());
    fails_saying(
        bk().args(["--addr", &addr, "--tlscacert"])
            .arg(certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(foreign.path().join("cert.pem"))
            .arg("--tlskey")
            .arg(foreign.path().join("key.pem"))
            .arg("info"),
        &[
            "refused the client certificate",
            &foreign.path().join("cert.pem").display().to_string(),
        ],
    );
    // The daemon's certificate checked against another CA.
    fails_saying(
        bk().args(["--addr", &addr, "--tlscacert"])
            .arg(foreign.path().join("ca.pem"))
            .arg("--tlscert")
            .arg(certs.join("cert.pem"))
            .arg("--tlskey")
            .arg(certs.join("key.pem"))
            .arg("info"),
        &["did not sign", "--tlscacert"],
    );
    // The certificate is for 127.0.0.1 and localhost, not another name.
    fails_saying(
        bk().args([
            "--addr",
            &addr,
            "--tlsservername",
            "build.example",
            "--tlsdir",
        ])
        .arg(certs)
        .arg("info"),
        &["not valid for that host name", "--tlsservername"],
    );
}

/// A TLS endpoint that waits for a ClientHello and never answers plain text (a TLS-only load
/// balancer in front of buildkitd does this): the timeout still names the TLS fix.
#[test]
fn a_silent_tcp_daemon_timing_out_names_the_tls_fix() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        // Hold the one connection open, unanswered, until the client gives up.
        let (mut s, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
    });
    fails_saying(
        bk().args(["--addr", &addr, "--timeout", "1", "info"]),
        &["no answer within 1s", "If it expects TLS", "--tlscacert"],
    );
    held.join().unwrap();
}
