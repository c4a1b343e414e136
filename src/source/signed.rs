//! A ZIP remote with `trusted-keys`: the ZIP and `<remote>.minisig`, fetched with conditional
//! requests, and the signature checked over the BLAKE2b-512 that the download computed.
//!
//! A check costs what an unchanged remote costs: one conditional request for the ZIP while the
//! live version is the remote's, and, while a refused version is remembered, one for the ZIP
//! and one for its signature; a refused pair is downloaded again only once one of them changes.

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::{Artifact, Fetched, Source};
use crate::state::{Refused, Stamp};
use crate::trust::{Refusal, Signature, Signed, TrustedKeys};

/// A signature larger than this is not a minisign signature (they are about 300 bytes).
pub(crate) const MAX_SIGNATURE: usize = 64 << 10;

/// What asking for `<remote>.minisig` found.
#[derive(Debug)]
pub(crate) enum SigFetch {
    /// It still has the validators it was asked about.
    Unchanged,
    /// There is none.
    Missing,
    /// Larger than [`MAX_SIGNATURE`]: not read.
    TooLarge,
    New {
        text: Vec<u8>,
        stamp: Stamp,
    },
}

/// The outcome of a signed check.
#[derive(Debug)]
pub(crate) enum SignedFetch {
    /// The live version is the remote's (the ZIP did not change).
    Unchanged,
    /// The version refused before is still offered, with the same signature.
    StillRefused,
    /// A new ZIP whose signature is good: by a trusted key, over these bytes and this trusted
    /// comment, for this file name. Its age and order are for the caller to judge.
    Verified {
        artifact: Artifact,
        signed: Signed,
        /// The `.minisig` text, kept with the release; `None` for git.
        signature: Option<String>,
        /// The signature's validators, remembered if the caller refuses the version.
        sig_stamp: Option<Stamp>,
    },
    /// A new ZIP that is refused; remember the pair so as not to fetch it again.
    Refused { remember: Refused },
}

impl Source {
    /// The remote's file name, which a signature's `file:` must name.
    fn file_name(&self) -> Option<String> {
        let name = match self {
            Source::Http(s) => s.file_name(),
            Source::S3(s) => s.file_name(),
            Source::Local(s) => s.file_name(),
            Source::Git(_) => None,
        };
        name.filter(|n| !n.is_empty())
    }

    async fn signature(
        &self,
        known: Option<&Stamp>,
        cancel: &CancellationToken,
    ) -> Result<SigFetch> {
        match self {
            Source::Http(s) => s.signature(known, cancel).await,
            Source::S3(s) => s.signature(known, cancel).await,
            Source::Local(s) => s.signature(known).await,
            Source::Git(_) => Ok(SigFetch::Missing),
        }
    }

    /// Check a ZIP remote under `trusted-keys` (`keys`, read from `keys_file`): `known` is the
    /// live version's stamp, `refused` the pair refused before, if any.
    pub async fn fetch_signed(
        &self,
        keys: &TrustedKeys,
        keys_file: &str,
        known: Option<&Stamp>,
        refused: Option<&Refused>,
        cancel: &CancellationToken,
    ) -> Result<SignedFetch> {
        let asked = refused.map(|r| &r.zip).or(known);
        let artifact = match self.fetch(asked, cancel).await? {
            Fetched::New(artifact) => artifact,
            Fetched::Unchanged => {
                let Some(refused) = refused else {
                    return Ok(SignedFetch::Unchanged);
                };
                // The refused ZIP again: only a new signature can change the verdict.
                match self.signature(refused.signature.as_ref(), cancel).await? {
                    SigFetch::Unchanged => return Ok(SignedFetch::StillRefused),
                    SigFetch::Missing if refused.signature.is_none() => {
                        return Ok(SignedFetch::StillRefused);
                    }
                    _ => match self.fetch(None, cancel).await? {
                        Fetched::New(artifact) => artifact,
                        Fetched::Unchanged => anyhow::bail!(
                            "the remote answered an unconditional request with \"not modified\""
                        ),
                    },
                }
            }
        };
        let at = format!("{}.minisig", self.shown());
        let sig = self.signature(None, cancel).await?;
        let (text, sig_stamp) = match sig {
            SigFetch::New { text, stamp } => (text, Some(stamp)),
            SigFetch::Missing => {
                let refusal = Refusal::Missing { at };
                return Ok(refuse(refusal, &artifact, None));
            }
            SigFetch::TooLarge | SigFetch::Unchanged => {
                let refusal = Refusal::Malformed {
                    at,
                    why: format!("larger than {MAX_SIGNATURE} bytes"),
                };
                return Ok(refuse(refusal, &artifact, None));
            }
        };
        let verdict = String::from_utf8(text)
            .map_err(|_| Refusal::Malformed {
                at: at.clone(),
                why: "not text".into(),
            })
            .and_then(|text| {
                let signature = Signature::parse(&text, &at)?;
                let digest = artifact
                    .prehash
                    .as_ref()
                    .ok_or_else(|| Refusal::Malformed {
                        at: at.clone(),
                        why: "no prehash of the ZIP was computed (a bug)".into(),
                    })?;
                let signed = keys.verify(&signature, digest, keys_file)?;
                if let (Some(claimed), Some(name)) = (&signature.file, self.file_name())
                    && *claimed != name
                {
                    return Err(Refusal::WrongFile {
                        signed: claimed.clone(),
                        expected: name,
                    });
                }
                Ok((signed, text))
            });
        match verdict {
            Ok((signed, signature)) => Ok(SignedFetch::Verified {
                artifact,
                signed,
                signature: Some(signature),
                sig_stamp,
            }),
            Err(refusal) => Ok(refuse(refusal, &artifact, sig_stamp)),
        }
    }

    /// [`Source::fetch_signed`] for a git remote with `allowed-signers`.
    pub async fn fetch_git_signed(
        &self,
        known: Option<&Stamp>,
        refused: Option<&Refused>,
        cancel: &CancellationToken,
    ) -> Result<SignedFetch> {
        match self {
            Source::Git(s) => s.fetch_signed(known, refused, cancel).await,
            _ => anyhow::bail!("allowed-signers with a remote that is not git (a bug)"),
        }
    }

    fn shown(&self) -> String {
        match self {
            Source::Http(s) => s.shown().to_string(),
            Source::S3(s) => s.shown().to_string(),
            Source::Local(s) => s.shown(),
            Source::Git(_) => String::new(),
        }
    }
}

fn refuse(refusal: Refusal, artifact: &Artifact, signature: Option<Stamp>) -> SignedFetch {
    SignedFetch::Refused {
        remember: Refused::of(&refusal, artifact.stamp.clone(), signature),
    }
}
