//! minisign's formats and its check, over a BLAKE2b-512 digest computed while the ZIP
//! downloaded (`minisign -S` signs that prehash by default).
//!
//! Why by hand: the two formats are four base64 lines, and the crates that read them
//! (`minisign`, `minisign-verify`) verify only from the data itself — read again, or streamed
//! through a verifier that must exist before the download starts. We hash once, while the
//! bytes arrive (before the signature is even fetched), and check the Ed25519 signatures over
//! that digest with ring. Compatibility is tested against Debian's `minisign` binary.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use blake2::{Blake2b512, Digest};

use super::{Refusal, Signed};

/// The signature algorithm of a prehashed signature (`minisign -S` since 0.8) and of keys.
const ALG_PREHASHED: &[u8; 2] = b"ED";
const ALG_LEGACY: &[u8; 2] = b"Ed";

/// minisign's key id: 8 bytes, printed as a little-endian 64-bit number in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyId([u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

#[derive(Debug, Clone)]
struct PublicKey {
    id: KeyId,
    key: [u8; 32],
}

/// The keys of `trusted-keys`: one or more `minisign.pub` files' contents, concatenated.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// Parse the file's text. Lines are `untrusted comment: …` (ignored), blank, `#`
    /// comments, or a key in base64; anything else is an error naming the line.
    pub fn parse(text: &str) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
                continue;
            }
            let bytes = STANDARD.decode(line).ok().filter(|b| b.len() == 42);
            let Some(bytes) = bytes.filter(|b| b[..2] == *ALG_LEGACY) else {
                return Err(format!(
                    "line {}: not a minisign public key (the second line of a minisign.pub file, such as RWQ…)",
                    n + 1
                ));
            };
            let mut id = [0; 8];
            id.copy_from_slice(&bytes[2..10]);
            let mut key = [0; 32];
            key.copy_from_slice(&bytes[10..42]);
            keys.push(PublicKey { id: KeyId(id), key });
        }
        if keys.is_empty() {
            return Err("no public key in it: paste the contents of minisign.pub".into());
        }
        Ok(TrustedKeys { keys })
    }

    /// The keys, concatenated (for [`super::Trust::fingerprint`]).
    pub fn fingerprint(&self) -> Vec<u8> {
        self.keys
            .iter()
            .flat_map(|k| k.id.0.into_iter().chain(k.key))
            .collect()
    }

    /// The key ids, as `minisign` prints them.
    #[cfg(test)]
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.to_string()).collect()
    }

    /// Check `signature` against the BLAKE2b-512 `digest` of the data: the key is trusted,
    /// the signature covers the digest, and the global signature covers the trusted comment.
    /// `keys_file` names the file for the refusal's message.
    pub fn verify(
        &self,
        signature: &Signature,
        digest: &[u8; 64],
        keys_file: &str,
    ) -> Result<Signed, Refusal> {
        let Some(key) = self.keys.iter().find(|k| k.id == signature.key_id) else {
            return Err(Refusal::UnknownKey {
                key: signature.key_id.to_string(),
                file: keys_file.to_string(),
            });
        };
        let ed25519 = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.key);
        let mut global = Vec::with_capacity(64 + signature.trusted_comment.len());
        global.extend_from_slice(&signature.signature);
        global.extend_from_slice(signature.trusted_comment.as_bytes());
        let good = ed25519.verify(digest, &signature.signature).is_ok()
            && ed25519.verify(&global, &signature.global).is_ok();
        if !good {
            return Err(Refusal::BadSignature {
                key: key.id.to_string(),
            });
        }
        Ok(Signed {
            signer: key.id.to_string(),
            timestamp: signature.timestamp,
        })
    }
}

/// A parsed `.minisig` (not verified yet).
#[derive(Debug, Clone)]
pub struct Signature {
    key_id: KeyId,
    signature: [u8; 64],
    trusted_comment: String,
    global: [u8; 64],
    /// The trusted comment's `timestamp:`.
    timestamp: u64,
    /// The trusted comment's `file:`, if any.
    pub file: Option<String>,
}

impl Signature {
    /// Parse a `.minisig` found at `at` (for messages). A legacy (not prehashed) signature,
    /// or a trusted comment without `timestamp:`, is malformed here.
    pub fn parse(text: &str, at: &str) -> Result<Signature, Refusal> {
        let malformed = |why: &str| Refusal::Malformed {
            at: at.to_string(),
            why: why.to_string(),
        };
        let mut lines = text.lines();
        let mut next = |what: &str| {
            lines
                .next()
                .ok_or_else(|| malformed(&format!("it ends before its {what}")))
        };
        if !next("first line")?.starts_with("untrusted comment:") {
            return Err(malformed("its first line is not an untrusted comment"));
        }
        let sig = STANDARD
            .decode(next("signature")?.trim())
            .ok()
            .filter(|b| b.len() == 74)
            .ok_or_else(|| malformed("its second line is not a minisign signature"))?;
        match &sig[..2] {
            a if a == ALG_PREHASHED => {}
            a if a == ALG_LEGACY => {
                return Err(malformed(
                    "a legacy signature of the whole file: sign with minisign 0.8 or later (-S hashes by default) or `repo-deploy publish --sign`",
                ));
            }
            _ => return Err(malformed("an unknown signature algorithm")),
        }
        let comment = next("trusted comment")?;
        let trusted_comment = comment
            .strip_prefix("trusted comment: ")
            .ok_or_else(|| malformed("its third line is not a trusted comment"))?
            .to_string();
        let global = STANDARD
            .decode(next("comment signature")?.trim())
            .ok()
            .and_then(|g| <[u8; 64]>::try_from(g).ok())
            .ok_or_else(|| malformed("its fourth line is not a comment signature"))?;
        let (timestamp, file) = claims(&trusted_comment);
        let timestamp = timestamp.ok_or_else(|| {
            malformed("its trusted comment has no `timestamp:` (minisign -S writes one)")
        })?;
        let mut key_id = [0; 8];
        key_id.copy_from_slice(&sig[2..10]);
        let mut signature = [0; 64];
        signature.copy_from_slice(&sig[10..74]);
        Ok(Signature {
            key_id: KeyId(key_id),
            signature,
            trusted_comment,
            global,
            timestamp,
            file,
        })
    }
}

/// `timestamp:` and `file:` of a trusted comment. minisign separates the fields with a tab;
/// a comment without tabs is split at spaces.
fn claims(comment: &str) -> (Option<u64>, Option<String>) {
    let fields: Vec<&str> = if comment.contains('\t') {
        comment.split('\t').collect()
    } else {
        comment.split_whitespace().collect()
    };
    let field = |name: &str| fields.iter().find_map(|f| f.trim().strip_prefix(name));
    (
        field("timestamp:").and_then(|t| t.parse().ok()),
        field("file:").map(str::to_string),
    )
}

/// BLAKE2b-512 of the data as it streams by: minisign's prehash.
#[derive(Debug, Clone, Default)]
pub struct Prehash(Blake2b512);

impl Prehash {
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish(self) -> [u8; 64] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh key pair from the `minisign` crate: (the public key file's text, secret key).
    fn keypair() -> (String, minisign::SecretKey) {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("key pair");
        (kp.pk.to_box().expect("box").into_string(), kp.sk)
    }

    fn sign(sk: &minisign::SecretKey, data: &[u8], comment: &str) -> String {
        minisign::sign(None, sk, data, Some(comment), None)
            .expect("sign")
            .into_string()
    }

    fn digest(data: &[u8]) -> [u8; 64] {
        let mut h = Prehash::default();
        h.update(data);
        h.finish()
    }

    #[test]
    fn a_good_signature_verifies_and_every_change_is_refused() {
        let (public, sk) = keypair();
        let (other, other_sk) = keypair();
        let keys = TrustedKeys::parse(&public).expect("keys");
        let data = b"the bundle";
        let text = sign(&sk, data, "timestamp:1700000000\tfile:app.zip\thashed");
        let sig = Signature::parse(&text, "s").expect("parse");
        assert_eq!(sig.file.as_deref(), Some("app.zip"));
        let signed = keys.verify(&sig, &digest(data), "k").expect("verifies");
        assert_eq!(signed.timestamp, 1_700_000_000);
        assert_eq!(vec![signed.signer], keys.ids());

        let changed = keys.verify(&sig, &digest(b"the bundlf"), "k").unwrap_err();
        assert_eq!(changed.reason(), "bad_signature");
        let edited = text.replace("timestamp:1700000000", "timestamp:1800000000");
        let edited = Signature::parse(&edited, "s").expect("parse");
        let e = keys.verify(&edited, &digest(data), "k").unwrap_err();
        assert_eq!(e.reason(), "bad_signature", "the trusted comment is signed");
        let foreign = Signature::parse(&sign(&other_sk, data, "timestamp:1"), "s").expect("p");
        let e = keys.verify(&foreign, &digest(data), "k").unwrap_err();
        assert_eq!(e.reason(), "unknown_key");
        // Both keys trusted (a rotation): both verify.
        let both = TrustedKeys::parse(&format!("{public}\n{other}")).expect("keys");
        assert!(both.verify(&foreign, &digest(data), "k").is_ok());
        assert!(both.verify(&sig, &digest(data), "k").is_ok());
    }

    #[test]
    fn keys_parse_concatenated_and_reject_garbage() {
        let (public, _) = keypair();
        let two = format!("{public}\n{public}");
        assert_eq!(TrustedKeys::parse(&two).map(|k| k.keys.len()), Ok(2));
        let id = TrustedKeys::parse(&public).expect("key").ids().remove(0);
        assert!(
            public.contains(&id),
            "the id minisign prints: {id} in {public}"
        );
        assert!(
            TrustedKeys::parse("untrusted comment: x\nnot base64\n")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(
            TrustedKeys::parse("")
                .unwrap_err()
                .contains("no public key")
        );
    }

    #[test]
    fn trusted_comments_give_timestamp_and_file() {
        assert_eq!(
            claims("timestamp:1555779966\tfile:app.zip\thashed"),
            (Some(1555779966), Some("app.zip".into()))
        );
        assert_eq!(
            claims("timestamp:12  file:a b.zip"),
            (Some(12), Some("a".into()))
        );
        assert_eq!(claims("hello"), (None, None));
    }

    #[test]
    fn malformed_signatures_say_why() {
        let (_, sk) = keypair();
        let no_time = sign(&sk, b"x", "file:app.zip");
        for (text, why) in [
            ("", "ends before"),
            ("hello\n", "untrusted comment"),
            ("untrusted comment: x\nAAAA\n", "not a minisign signature"),
            (no_time.as_str(), "timestamp"),
        ] {
            let e = Signature::parse(text, "s").unwrap_err();
            assert_eq!(e.reason(), "malformed");
            assert!(e.to_string().contains(why), "{text:?}: {e}");
        }
    }
}
