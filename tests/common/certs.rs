//! Test certificates made with the `openssl` command: a certificate authority
//! and server certificates it signs. The tests that use them fail (they do not
//! skip) when openssl is missing; `.ci/run` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run openssl with `args`, failing the test with its error output.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (the TLS tests need the openssl command)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A test certificate authority in `dir`: `NAME.crt` and `NAME.key`.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN=pgshepherd test {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        path(&key),
        "-out",
        path(&crt),
    ]);
    crt
}

/// A server certificate for `san` (openssl's subjectAltName syntax) with common
/// name `cn`, signed by the CA `ca` (its `.crt`, next to its `.key`), written
/// as `dir/server.crt` with its new key `dir/server.key`. Each has a serial
/// number of its own.
pub fn sign_server_cert(dir: &Path, ca: &Path, san: &str, cn: &str) {
    let scratch = super::scratch_dir();
    let csr = scratch.path().join("server.csr");
    let ext = scratch.path().join("server.ext");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        path(&dir.join("server.key")),
        "-out",
        path(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(ca),
        "-CAkey",
        path(&ca.with_extension("key")),
        "-CAcreateserial",
        "-CAserial",
        path(&scratch.path().join("ca.srl")),
        "-days",
        "1",
        "-extfile",
        path(&ext),
        "-out",
        path(&dir.join("server.crt")),
    ]);
}
