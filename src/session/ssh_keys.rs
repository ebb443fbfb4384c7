//! An SSH agent in this process for `--ssh ID=KEYFILE[,KEYFILE…]`: private key files are read
//! and parsed when the build is planned, and the agent answers the forwarded-agent protocol's
//! "list identities" and "sign" requests with them, as BuildKit's client does for key files
//! (`sshprovider`: an in-memory keyring). Nothing is written anywhere; the keys live as long as
//! the session.
//!
//! Keys are OpenSSH private key files (`-----BEGIN OPENSSH PRIVATE KEY-----`, what `ssh-keygen`
//! writes): Ed25519, ECDSA (P-256, P-384, P-521) and RSA. Parsing and signing are RustCrypto's
//! `ssh-key` (and `rsa` for SHA-256 RSA signatures); an ECDSA key whose private scalar OpenSSH
//! wrote shorter than its curve's width (1 in 256) is padded for it first. A key with a passphrase, a PEM key, a
//! security key (`sk-…`, which needs its hardware) or a DSA key is refused when the build is
//! planned, saying how to use it instead (an agent socket). RSA signatures are
//! `rsa-sha2-256`/`rsa-sha2-512` as the request asks; a request for the SHA-1 `ssh-rsa`
//! signature, which OpenSSH clients no longer make by default, gets the agent's failure answer.
//!
//! Must not know about gRPC or the build: [`ssh`](super::ssh) frames the stream and calls
//! [`KeyAgent::answer`].

use std::io::Read;
use std::path::{Path, PathBuf};

use rsa::signature::Signer;
use ssh_key::private::KeypairData;
use ssh_key::PrivateKey;

/// The most a key file may hold (BuildKit reads at most 100 KiB of one).
const MAX_KEY_FILE: u64 = 100 * 1024;

const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
/// Sign-request flags asking for an RSA signature over SHA-256 / SHA-512 (draft-miller-ssh-agent).
const SSH_AGENT_RSA_SHA2_256: u32 = 2;
const SSH_AGENT_RSA_SHA2_512: u32 = 4;

/// A key file that cannot be served. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: cannot read the key file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {} KiB, so not a private key file; pass an OpenSSH private key (or an agent socket)", path.display(), MAX_KEY_FILE / 1024)]
    TooLarge { path: PathBuf },
    #[error("{}: the key is protected by a passphrase, which bk-build cannot ask for; add it to an agent (eval \"$(ssh-agent)\" && ssh-add {}) and pass the agent's socket instead (--ssh ID=$SSH_AUTH_SOCK), or use a key without a passphrase", path.display(), path.display())]
    Encrypted { path: PathBuf },
    #[error("{}: a {kind} key file; bk-build reads OpenSSH private keys (\"BEGIN OPENSSH PRIVATE KEY\"): convert a copy with ssh-keygen -p -N '' -f COPY (it rewrites the key in OpenSSH format), or add the key to an agent and pass its socket", path.display())]
    Pem { path: PathBuf, kind: &'static str },
    #[error("{}: not an OpenSSH private key ({why}); pass a private key file such as ~/.ssh/id_ed25519, or an agent socket", path.display())]
    Parse { path: PathBuf, why: String },
    #[error("{}: {what} keys cannot be used from a file; add the key to an agent and pass its socket (--ssh ID=$SSH_AUTH_SOCK)", path.display())]
    Unsupported { path: PathBuf, what: String },
}

/// One key the agent serves.
struct Key {
    /// The public key in the SSH wire format, as identities are listed and sign requests name
    /// the key.
    blob: Vec<u8>,
    comment: String,
    private: PrivateKey,
}

/// The keys of one `--ssh` ID, answering agent requests.
pub struct KeyAgent {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeyAgent {
    /// Never shows key material: only how many keys, and their comments.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgent")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| k.comment.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyAgent {
    /// Reads and parses every file of `paths` (in order: identities are listed in it).
    ///
    /// # Errors
    /// The first file that cannot be read or used as a key.
    pub fn load(paths: &[PathBuf]) -> Result<KeyAgent, KeyFileError> {
        let mut keys = Vec::with_capacity(paths.len());
        for p in paths {
            let private = read_key(p)?;
            let blob = private
                .public_key()
                .to_bytes()
                .map_err(|e| KeyFileError::Parse {
                    path: p.clone(),
                    why: e.to_string(),
                })?;
            let comment = private.comment().to_string();
            keys.push(Key {
                blob,
                comment,
                private,
            });
        }
        Ok(KeyAgent { keys })
    }

    /// The reply to one agent request (a whole message with its length prefix), also framed.
    /// Only "list identities" and "sign" are answered; anything else, a malformed request, a
    /// key this agent does not hold or a signature it will not make gets `SSH_AGENT_FAILURE`,
    /// as an agent answers them.
    pub fn answer(&self, request: &[u8]) -> Vec<u8> {
        let body = request.get(4..).unwrap_or_default();
        let reply = match body.split_first() {
            Some((&SSH_AGENTC_REQUEST_IDENTITIES, _)) => Some(self.identities()),
            Some((&SSH_AGENTC_SIGN_REQUEST, rest)) => self.sign(rest),
            _ => None,
        };
        frame(reply.unwrap_or_else(|| vec![SSH_AGENT_FAILURE]))
    }

    fn identities(&self) -> Vec<u8> {
        let mut out = vec![SSH_AGENT_IDENTITIES_ANSWER];
        put_u32(&mut out, self.keys.len() as u32);
        for k in &self.keys {
            put_string(&mut out, &k.blob);
            put_string(&mut out, k.comment.as_bytes());
        }
        out
    }

    /// `string key blob, string data, uint32 flags` → `SSH_AGENT_SIGN_RESPONSE, string
    /// signature` (the signature blob: `string algorithm, string signature bytes`).
    fn sign(&self, mut rest: &[u8]) -> Option<Vec<u8>> {
        let blob = take_string(&mut rest)?;
        let data = take_string(&mut rest)?;
        let flags = take_u32(&mut rest).unwrap_or(0);
        let key = self.keys.iter().find(|k| k.blob == blob)?;
        let (algorithm, signature) = match key.private.key_data() {
            KeypairData::Rsa(rsa_key) => {
                let private = rsa_private_key(rsa_key)?;
                let (alg, bytes): (&str, Box<[u8]>) = if flags & SSH_AGENT_RSA_SHA2_512 != 0 {
                    let k = rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(private);
                    ("rsa-sha2-512", k.try_sign(data).ok()?.into())
                } else if flags & SSH_AGENT_RSA_SHA2_256 != 0 {
                    let k = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
                    ("rsa-sha2-256", k.try_sign(data).ok()?.into())
                } else {
                    // SHA-1 `ssh-rsa`: not made (see the module docs).
                    return None;
                };
                (alg.to_string(), bytes.to_vec())
            }
            other => {
                let s: ssh_key::Signature = other.try_sign(data).ok()?;
                (s.algorithm().as_str().to_string(), s.as_bytes().to_vec())
            }
        };
        let mut sig = Vec::with_capacity(signature.len() + algorithm.len() + 8);
        put_string(&mut sig, algorithm.as_bytes());
        put_string(&mut sig, &signature);
        let mut out = vec![SSH_AGENT_SIGN_RESPONSE];
        put_string(&mut out, &sig);
        Some(out)
    }
}

/// The `rsa` crate's private key for an OpenSSH RSA key. Built here rather than with
/// ssh-key 0.6's own conversion, which passes the prime `p` twice and so fails for every key
/// (fixed in its 0.7 line).
fn rsa_private_key(k: &ssh_key::private::RsaKeypair) -> Option<rsa::RsaPrivateKey> {
    let int = |m: &ssh_key::Mpint| rsa::BigUint::try_from(m).ok();
    rsa::RsaPrivateKey::from_components(
        int(&k.public.n)?,
        int(&k.public.e)?,
        int(&k.private.d)?,
        vec![int(&k.private.p)?, int(&k.private.q)?],
    )
    .ok()
}

/// Reads one key file (at most [`MAX_KEY_FILE`]) and parses it as an OpenSSH private key.
fn read_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    // The file's bytes hold the key in the clear: overwritten when dropped.
    let mut text = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    parse_key(path, &text)
}

/// The unencrypted OpenSSH key file `text` again, with a short ECDSA private scalar
/// left-padded with zero bytes to its curve's width; `None` when it is not such a file or
/// needs no padding. Format: OpenSSH's PROTOCOL.key (`openssh-key-v1`), RFC 5656 §3.1 (the
/// key fields), RFC 4251 §5 (`string`, `mpint`).
fn pad_ecdsa_scalar(text: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    let armored = std::str::from_utf8(text).ok()?.trim();
    let body = armored.strip_prefix(BEGIN)?.strip_suffix(END)?;
    let b64: String = body.split_ascii_whitespace().collect();
    let raw = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .ok()?,
    );

    // Fixed-size fields (the magic, the check integers).
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }

    let mut b: &[u8] = &raw;
    let magic = take(&mut b, 15)?;
    let head_len = raw.len() - b.len();
    let (cipher, kdf, _kdf_opts) = (
        take_string(&mut b)?,
        take_string(&mut b)?,
        take_string(&mut b)?,
    );
    if magic != b"openssh-key-v1\0" || cipher != b"none" || kdf != b"none" {
        return None;
    }
    let nkeys = take_u32(&mut b)?;
    let public = take_string(&mut b)?;
    let before_private = raw.len() - b.len();
    let private = take_string(&mut b)?;
    if nkeys != 1 || !b.is_empty() {
        return None;
    }
    let mut p = private;
    let checks = take(&mut p, 8)?;
    let kind = take_string(&mut p)?;
    let width = match kind {
        b"ecdsa-sha2-nistp256" => 32,
        b"ecdsa-sha2-nistp384" => 48,
        b"ecdsa-sha2-nistp521" => 66,
        _ => return None,
    };
    let (curve, point, scalar, comment) = (
        take_string(&mut p)?,
        take_string(&mut p)?,
        take_string(&mut p)?,
        take_string(&mut p)?,
    );
    if scalar.len() >= width || scalar.first().is_some_and(|&x| x >= 0x80) {
        return None;
    }
    let mut section = zeroize::Zeroizing::new(Vec::with_capacity(private.len() + width));
    section.extend_from_slice(checks);
    put_string(&mut section, kind);
    put_string(&mut section, curve);
    put_string(&mut section, point);
    let mut wide = zeroize::Zeroizing::new(vec![0u8; width - scalar.len()]);
    wide.extend_from_slice(scalar);
    put_string(&mut section, &wide);
    put_string(&mut section, comment);
    // Padding 1, 2, 3, … to the cipher's block size (8 for "none").
    let mut pad = 1u8;
    while section.len() % 8 != 0 {
        section.push(pad);
        pad += 1;
    }
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(raw.len() + width));
    out.extend_from_slice(&raw[..head_len]);
    out.extend_from_slice(&raw[head_len..before_private - (4 + public.len()) - 4]);
    put_u32(&mut out, nkeys);
    put_string(&mut out, public);
    put_string(&mut out, &section);
    let encoded = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*out));
    let mut armored = zeroize::Zeroizing::new(Vec::with_capacity(encoded.len() + 100));
    armored.extend_from_slice(BEGIN.as_bytes());
    armored.push(b'\n');
    for line in encoded.as_bytes().chunks(70) {
        armored.extend_from_slice(line);
        armored.push(b'\n');
    }
    armored.extend_from_slice(END.as_bytes());
    armored.push(b'\n');
    Some(armored)
}

fn parse_key(path: &Path, text: &[u8]) -> Result<PrivateKey, KeyFileError> {
    let head = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
    let pem_kinds = [
        ("-----BEGIN RSA PRIVATE KEY-----", "PEM (PKCS#1) RSA"),
        ("-----BEGIN EC PRIVATE KEY-----", "PEM (SEC1) EC"),
        ("-----BEGIN DSA PRIVATE KEY-----", "PEM DSA"),
        ("-----BEGIN PRIVATE KEY-----", "PEM (PKCS#8)"),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
            "PEM (encrypted PKCS#8)",
        ),
    ];
    if let Some((_, kind)) = pem_kinds
        .iter()
        .find(|(h, _)| head.trim_start().starts_with(h))
    {
        return Err(KeyFileError::Pem {
            path: path.to_path_buf(),
            kind,
        });
    }
    // ssh-key 0.6 wants an ECDSA private scalar at its full width; OpenSSH writes it as an
    // mpint, one byte shorter for the 1 key in 256 whose scalar starts with a zero byte.
    let padded = PrivateKey::from_openssh(text)
        .is_err()
        .then(|| pad_ecdsa_scalar(text))
        .flatten();
    let text: &[u8] = padded.as_deref().map_or(text, |p| p.as_slice());
    let key = PrivateKey::from_openssh(text).map_err(|e| KeyFileError::Parse {
        path: path.to_path_buf(),
        why: if head.contains("PRIVATE KEY-----") {
            e.to_string()
        } else {
            "no \"BEGIN OPENSSH PRIVATE KEY\" line".to_string()
        },
    })?;
    if key.is_encrypted() {
        return Err(KeyFileError::Encrypted {
            path: path.to_path_buf(),
        });
    }
    let unsupported = |what: &str| KeyFileError::Unsupported {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    match key.key_data() {
        KeypairData::Ed25519(_) | KeypairData::Ecdsa(_) => Ok(key),
        KeypairData::Rsa(k) => match rsa_private_key(k) {
            Some(_) => Ok(key),
            None => Err(KeyFileError::Parse {
                path: path.to_path_buf(),
                why: "its RSA numbers do not make a valid key".into(),
            }),
        },
        KeypairData::Dsa(_) => Err(unsupported("DSA")),
        KeypairData::SkEd25519(_) | KeypairData::SkEcdsaSha2NistP256(_) => {
            Err(unsupported("security-key (sk-…)"))
        }
        other => Err(unsupported(
            &other
                .algorithm()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "this kind of".to_string()),
        )),
    }
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    put_u32(&mut out, body.len() as u32);
    out.extend_from_slice(&body);
    out
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    *buf = rest;
    Some(u32::from_be_bytes(*head))
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(buf)? as usize;
    if buf.len() < len {
        return None;
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `ssh-keygen` (OpenSSH's client tools) to make a key; `None` when it is missing.
    fn keygen(dir: &Path, name: &str, args: &[&str]) -> Option<PathBuf> {
        let path = dir.join(name);
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-C", name, "-f"])
            .arg(&path)
            .args(args)
            .status()
            .ok()?
            .success();
        ok.then_some(path)
    }

    fn request(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(payload);
        frame(body)
    }

    /// 1 ECDSA key in 256 has a private scalar that starts with a zero byte, which OpenSSH
    /// writes one byte short: such keys (made until one turns up) load and sign like others.
    #[test]
    fn ecdsa_keys_with_a_short_private_scalar_work() {
        let dir = tempfile::tempdir().unwrap();
        if keygen(dir.path(), "probe", &["-t", "ed25519", "-N", ""]).is_none() {
            eprintln!("ssh-keygen not found; skipped");
            return;
        }
        for bits in ["256", "384"] {
            let key = (0..4000)
                .find_map(|i| {
                    let attempt = dir.path().join(format!("p{bits}-{i}"));
                    std::fs::create_dir(&attempt).ok()?;
                    let p = keygen(&attempt, "short", &["-t", "ecdsa", "-b", bits, "-N", ""])?;
                    pad_ecdsa_scalar(&std::fs::read(&p).ok()?).map(|_| p)
                })
                .expect("no key with a short scalar in 4000 tries");
            let agent = KeyAgent::load(std::slice::from_ref(&key))
                .unwrap_or_else(|e| panic!("P-{bits}: {e}"));
            let reply = agent.answer(&request(SSH_AGENTC_REQUEST_IDENTITIES, &[]));
            let mut body = &reply[5..];
            assert_eq!(take_u32(&mut body), Some(1));
            let blob = take_string(&mut body).unwrap().to_vec();
            // The same public key as ssh-keygen wrote beside it.
            let pub_line = std::fs::read_to_string(key.with_extension("pub")).unwrap();
            let listed = ssh_key::PublicKey::from_bytes(&blob).unwrap();
            assert_eq!(
                listed.to_openssh().unwrap().split(' ').nth(1),
                pub_line.split(' ').nth(1),
                "P-{bits}"
            );
            let mut payload = Vec::new();
            put_string(&mut payload, &blob);
            put_string(&mut payload, b"data to sign");
            put_u32(&mut payload, 0);
            let reply = agent.answer(&request(SSH_AGENTC_SIGN_REQUEST, &payload));
            assert_eq!(reply[4], SSH_AGENT_SIGN_RESPONSE, "P-{bits}");
            let mut rest = &reply[5..];
            let mut sig = take_string(&mut rest).unwrap();
            let alg = take_string(&mut sig).unwrap().to_vec();
            let bytes = take_string(&mut sig).unwrap();
            let signature = ssh_key::Signature::new(
                ssh_key::Algorithm::new(std::str::from_utf8(&alg).unwrap()).unwrap(),
                bytes.to_vec(),
            )
            .unwrap();
            rsa::signature::Verifier::verify(&listed, b"data to sign", &signature)
                .unwrap_or_else(|e| panic!("P-{bits}: {e}"));
        }
    }

    #[test]
    fn lists_and_signs_with_every_key_kind() {
        let dir = tempfile::tempdir().unwrap();
        let Some(ed) = keygen(dir.path(), "ed", &["-t", "ed25519", "-N", ""]) else {
            eprintln!("ssh-keygen not found; skipped");
            return;
        };
        let ec = keygen(dir.path(), "ec", &["-t", "ecdsa", "-b", "384", "-N", ""]).unwrap();
        let rsa = keygen(dir.path(), "rsa", &["-t", "rsa", "-b", "2048", "-N", ""]).unwrap();
        let agent = KeyAgent::load(&[ed.clone(), ec, rsa]).unwrap();

        let reply = agent.answer(&request(SSH_AGENTC_REQUEST_IDENTITIES, &[]));
        let mut body = &reply[5..];
        assert_eq!(reply[4], SSH_AGENT_IDENTITIES_ANSWER);
        assert_eq!(take_u32(&mut body), Some(3));
        let mut blobs = Vec::new();
        for name in ["ed", "ec", "rsa"] {
            let blob = take_string(&mut body).unwrap().to_vec();
            assert_eq!(take_string(&mut body).unwrap(), name.as_bytes());
            blobs.push(blob);
        }
        // Every signature verifies with the public key the agent listed.
        for (blob, flags, alg) in [
            (&blobs[0], 0, "ssh-ed25519"),
            (&blobs[1], 0, "ecdsa-sha2-nistp384"),
            (&blobs[2], SSH_AGENT_RSA_SHA2_256, "rsa-sha2-256"),
            (&blobs[2], SSH_AGENT_RSA_SHA2_512, "rsa-sha2-512"),
        ] {
            let mut payload = Vec::new();
            put_string(&mut payload, blob);
            put_string(&mut payload, b"data to sign");
            put_u32(&mut payload, flags);
            let reply = agent.answer(&request(SSH_AGENTC_SIGN_REQUEST, &payload));
            assert_eq!(reply[4], SSH_AGENT_SIGN_RESPONSE, "{alg}");
            let mut rest = &reply[5..];
            let mut sig = take_string(&mut rest).unwrap();
            let got_alg = take_string(&mut sig).unwrap();
            assert_eq!(got_alg, alg.as_bytes());
            let bytes = take_string(&mut sig).unwrap();
            let public = ssh_key::PublicKey::from_bytes(blob).unwrap();
            let signature =
                ssh_key::Signature::new(ssh_key::Algorithm::new(alg).unwrap(), bytes.to_vec())
                    .unwrap();
            rsa::signature::Verifier::verify(&public, b"data to sign", &signature)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
        }

        // SHA-1 RSA, unknown keys, other requests and garbage: the agent's failure answer.
        let failure = frame(vec![SSH_AGENT_FAILURE]);
        let mut payload = Vec::new();
        put_string(&mut payload, &blobs[2]);
        put_string(&mut payload, b"x");
        put_u32(&mut payload, 0);
        assert_eq!(
            agent.answer(&request(SSH_AGENTC_SIGN_REQUEST, &payload)),
            failure
        );
        let mut payload = Vec::new();
        put_string(&mut payload, b"not a key");
        put_string(&mut payload, b"x");
        assert_eq!(
            agent.answer(&request(SSH_AGENTC_SIGN_REQUEST, &payload)),
            failure
        );
        assert_eq!(agent.answer(&request(17, b"add a key")), failure);
        assert_eq!(
            agent.answer(&request(SSH_AGENTC_SIGN_REQUEST, &[0, 0, 9])),
            failure
        );
        assert_eq!(agent.answer(&[0, 0]), failure);
    }

    #[test]
    fn unusable_files_are_refused_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let Some(enc) = keygen(dir.path(), "enc", &["-t", "ed25519", "-N", "secret"]) else {
            eprintln!("ssh-keygen not found; skipped");
            return;
        };
        let e = KeyAgent::load(&[enc]).unwrap_err();
        assert!(matches!(e, KeyFileError::Encrypted { .. }), "{e}");
        assert!(e.to_string().contains("ssh-add"), "{e}");

        let pem = keygen(
            dir.path(),
            "pem",
            &["-t", "rsa", "-b", "2048", "-m", "PEM", "-N", ""],
        )
        .unwrap();
        let e = KeyAgent::load(&[pem]).unwrap_err();
        assert!(e.to_string().contains("PEM (PKCS#1) RSA"), "{e}");

        let public = dir.path().join("enc.pub");
        let e = KeyAgent::load(&[public]).unwrap_err();
        assert!(matches!(e, KeyFileError::Parse { .. }), "{e}");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 200 * 1024]).unwrap();
        let e = KeyAgent::load(&[big]).unwrap_err();
        assert!(matches!(e, KeyFileError::TooLarge { .. }), "{e}");

        let e = KeyAgent::load(&[dir.path().join("missing")]).unwrap_err();
        assert!(matches!(e, KeyFileError::Read { .. }), "{e}");
    }
}
