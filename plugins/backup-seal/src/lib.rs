//! `backup-seal`: compresses (zstd) and encrypts (ChaCha20-Poly1305) the node's backup
//! stream, and undoes both when a backup is restored (`cairn snapshot restore --unseal`).
//!
//! Config (the same for sealing and opening): `{"key": "<64 hex digits>"}`, a 256-bit key.
//!
//! The sealed format, all integers big-endian:
//! ```text
//! header: "CAIRNSL1" (8 bytes) | salt (16 random bytes)
//! frame*: u32 length (bit 31 set on the final frame) | ciphertext (length bytes, tag included)
//! ```
//! Each stream gets its own key, HMAC-SHA256(key, "cairn backup-seal v1" | salt), so the
//! nonce can be a frame counter: `counter (u64) | 0 0 0 | final flag`. The header is
//! every frame's associated data. Reordered, dropped, duplicated or altered frames fail
//! to decrypt, and a stream cut short lacks its final frame: opening refuses all of them.
//! Each non-final frame holds one zstd frame of one chunk (concatenated zstd frames are a
//! zstd stream, so decrypted frames also decompress with `zstd -d`); the final frame is
//! empty.
//!
//! Pure-Rust zstd (`ruzstd`, its fastest level): the C zstd crate does not build for
//! wasm32-wasip2 without a C toolchain for that target.

use std::cell::RefCell;
use std::io::Read;

use cairn_plugin_sdk::{Direction, Plugin};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

const MAGIC: &[u8; 8] = b"CAIRNSL1";
const SALT_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + SALT_LEN;
const FINAL: u32 = 1 << 31;
/// The largest frame opening accepts (and a decompressed frame's bound): far above the
/// node's 64 KiB chunks, small enough that a corrupt length cannot exhaust memory.
const MAX_FRAME: usize = 8 << 20;
const SUFFIX: &str = ".zst.sealed";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    key: String,
}

/// The stream in progress on this instance.
enum Stream {
    Idle,
    Seal(Sealer),
    Open(Opener),
}

thread_local! {
    static STREAM: RefCell<Stream> = const { RefCell::new(Stream::Idle) };
}

struct Sealer {
    cipher: ChaCha20Poly1305,
    header: Vec<u8>,
    header_sent: bool,
    counter: u64,
}

struct Opener {
    key: [u8; 32],
    /// Set once the header is read.
    cipher: Option<(ChaCha20Poly1305, Vec<u8>)>,
    buf: Vec<u8>,
    counter: u64,
    finished: bool,
}

fn config_key() -> Result<[u8; 32], String> {
    let config: Config = cairn_plugin_sdk::config()?;
    parse_key(&config.key)
}

fn parse_key(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err("key must be 64 hex digits (256 bits)".into());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "key must be 64 hex digits (256 bits)".to_string())?;
    }
    Ok(key)
}

/// The stream's own cipher and the header it is bound to.
fn stream_cipher(key: &[u8; 32], salt: &[u8]) -> (ChaCha20Poly1305, Vec<u8>) {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(b"cairn backup-seal v1");
    mac.update(salt);
    let stream_key = mac.finalize().into_bytes();
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(salt);
    (ChaCha20Poly1305::new(Key::from_slice(&stream_key)), header)
}

fn nonce(counter: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

impl Sealer {
    fn new(key: &[u8; 32]) -> Result<Sealer, String> {
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| format!("no randomness for the salt: {e}"))?;
        let (cipher, header) = stream_cipher(key, &salt);
        Ok(Sealer {
            cipher,
            header,
            header_sent: false,
            counter: 0,
        })
    }

    fn frame(&mut self, plain: &[u8], last: bool) -> Result<Vec<u8>, String> {
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce(self.counter, last)),
                Payload {
                    msg: plain,
                    aad: &self.header,
                },
            )
            .map_err(|_| "encryption failed".to_string())?;
        self.counter += 1;
        let mut out = Vec::with_capacity(HEADER_LEN + 4 + sealed.len());
        if !self.header_sent {
            out.extend_from_slice(&self.header);
            self.header_sent = true;
        }
        let len = u32::try_from(sealed.len()).map_err(|_| "chunk too large")?;
        out.extend_from_slice(&(len | if last { FINAL } else { 0 }).to_be_bytes());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn transform(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        if chunk.is_empty() {
            return Ok(Vec::new());
        }
        let compressed =
            ruzstd::encoding::compress_to_vec(chunk, ruzstd::encoding::CompressionLevel::Fastest);
        self.frame(&compressed, false)
    }
}

impl Opener {
    fn transform(&mut self, chunk: &[u8]) -> Result<Vec<u8>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        if self.cipher.is_none() {
            if self.buf.len() < HEADER_LEN {
                return Ok(out);
            }
            if &self.buf[..MAGIC.len()] != MAGIC {
                return Err("not a backup-seal stream (bad magic)".into());
            }
            self.cipher = Some(stream_cipher(&self.key, &self.buf[MAGIC.len()..HEADER_LEN]));
            self.buf.drain(..HEADER_LEN);
        }
        let buf = std::mem::take(&mut self.buf);
        let mut rest = buf.as_slice();
        while let Some((word, body)) = rest.split_first_chunk::<4>() {
            if self.finished {
                return Err("bytes after the final frame".into());
            }
            let word = u32::from_be_bytes(*word);
            let len = (word & !FINAL) as usize;
            if len > MAX_FRAME + 16 {
                return Err(format!("frame of {len} bytes: corrupt stream"));
            }
            let Some((sealed, after)) = body.split_at_checked(len) else {
                break;
            };
            out.extend(self.open_frame(sealed, word & FINAL != 0)?);
            rest = after;
        }
        self.buf = rest.to_vec();
        Ok(out)
    }

    fn open_frame(&mut self, sealed: &[u8], last: bool) -> Result<Vec<u8>, String> {
        let Some((cipher, header)) = &self.cipher else {
            return Err("no header".into());
        };
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&nonce(self.counter, last)),
                Payload {
                    msg: sealed,
                    aad: header,
                },
            )
            .map_err(|_| {
                format!(
                    "frame {} does not decrypt: wrong key, or the backup was altered",
                    self.counter
                )
            })?;
        self.counter += 1;
        self.finished = last;
        if plain.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(plain.as_slice())
            .map_err(|e| format!("frame {}: bad zstd frame: {e}", self.counter - 1))?
            .take(MAX_FRAME as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("frame {}: bad zstd data: {e}", self.counter - 1))?;
        if out.len() > MAX_FRAME {
            return Err("a frame decompresses to more than 8 MiB: corrupt stream".into());
        }
        Ok(out)
    }

    fn finish(&self) -> Result<(), String> {
        if !self.finished || !self.buf.is_empty() {
            return Err("the sealed stream is truncated (no final frame)".into());
        }
        Ok(())
    }
}

pub struct BackupSeal;

impl Plugin for BackupSeal {
    fn backup_begin(direction: Direction, name: String) -> Result<String, String> {
        let key = config_key()?;
        let (stream, name) = match direction {
            Direction::Seal => (Stream::Seal(Sealer::new(&key)?), format!("{name}{SUFFIX}")),
            Direction::Open => (
                Stream::Open(Opener {
                    key,
                    cipher: None,
                    buf: Vec::new(),
                    counter: 0,
                    finished: false,
                }),
                name.strip_suffix(SUFFIX).unwrap_or(&name).to_string(),
            ),
        };
        STREAM.with(|s| *s.borrow_mut() = stream);
        Ok(name)
    }

    fn backup_transform(chunk: Vec<u8>) -> Result<Vec<u8>, String> {
        STREAM.with(|s| match &mut *s.borrow_mut() {
            Stream::Seal(sealer) => sealer.transform(&chunk),
            Stream::Open(opener) => opener.transform(&chunk),
            Stream::Idle => Err("no stream begun".into()),
        })
    }

    fn backup_finish() -> Result<Vec<u8>, String> {
        let stream = STREAM.with(|s| std::mem::replace(&mut *s.borrow_mut(), Stream::Idle));
        match stream {
            Stream::Seal(mut sealer) => sealer.frame(&[], true),
            Stream::Open(opener) => opener.finish().map(|()| Vec::new()),
            Stream::Idle => Err("no stream begun".into()),
        }
    }
}

cairn_plugin_sdk::export_plugin!(BackupSeal);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_plugin_sdk::testing::{backup_stream, Harness};
    use serde_json::json;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn host(key: &str) -> Harness {
        Harness::new().config(json!({ "key": key }))
    }

    /// Compressible but not trivial: a snapshot-like mix of keys and values.
    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if i % 7 == 0 {
                    (i / 7 % 251) as u8
                } else {
                    b'k'
                }
            })
            .collect()
    }

    fn seal(input: &[u8], chunk: usize) -> Vec<u8> {
        let (name, sealed) =
            backup_stream::<BackupSeal>(Direction::Seal, "b.snap", input, chunk).expect("seals");
        assert_eq!(name, "b.snap.zst.sealed");
        sealed
    }

    fn open(sealed: &[u8], chunk: usize) -> Result<Vec<u8>, String> {
        let (name, plain) =
            backup_stream::<BackupSeal>(Direction::Open, "b.snap.zst.sealed", sealed, chunk)?;
        assert_eq!(name, "b.snap");
        Ok(plain)
    }

    #[test]
    fn round_trips_whatever_the_chunking() {
        let _h = host(KEY);
        for (len, seal_chunk, open_chunk) in [
            (0, 64, 64),
            (1, 1, 1),
            (300_000, 65_536, 1000),
            (100_000, 7_777, 65_536),
        ] {
            let input = data(len);
            let sealed = seal(&input, seal_chunk);
            assert_eq!(
                open(&sealed, open_chunk).as_deref(),
                Ok(&input[..]),
                "{len}"
            );
            if len > 100_000 {
                assert!(
                    sealed.len() < input.len() / 2,
                    "compressed: {} of {len}",
                    sealed.len()
                );
            }
        }
    }

    #[test]
    fn each_stream_has_its_own_salt() {
        let _h = host(KEY);
        let input = data(1000);
        assert_ne!(seal(&input, 100), seal(&input, 100));
    }

    #[test]
    fn a_wrong_key_an_altered_byte_or_a_truncation_is_refused() {
        let _h = host(KEY);
        let sealed = seal(&data(200_000), 65_536);
        drop(_h);

        let _h = host(&KEY.replace("00", "ff"));
        assert!(open(&sealed, 4096).is_err_and(|e| e.contains("does not decrypt")));
        drop(_h);

        let _h = host(KEY);
        let mut altered = sealed.clone();
        altered[HEADER_LEN + 100] ^= 1;
        assert!(open(&altered, 4096).is_err());
        // Cut inside the final frame, and without it (4 + 16 bytes: an empty plaintext).
        for cut in [5, 20] {
            let truncated = &sealed[..sealed.len() - cut];
            assert!(
                open(truncated, 4096).is_err_and(|e| e.contains("truncated")),
                "{cut}"
            );
        }
        assert!(
            open(b"not sealed at all, just some bytes", 8).is_err_and(|e| e.contains("bad magic"))
        );
    }

    #[test]
    fn a_bad_key_in_the_config_is_refused_at_begin() {
        let _h = host("abc");
        assert!(BackupSeal::backup_begin(Direction::Seal, "x".into())
            .is_err_and(|e| e.contains("64 hex")));
    }
}
