//! `hostile`: a plugin that misbehaves on purpose, for the node's tests of its sandbox.
//! Its config picks the misbehaviour: `{"mode": "loop" | "alloc" | "trap" | "garbage" |
//! "spam" | "deny" | "allow" | "rewrite"}`, in every hook it serves (admission, auth:
//! `authenticate` misbehaves for any token, `authorize` for every request). Never deploy it.

use cairn_plugin_sdk::{
    host, AuthRequest, Credentials, Decision, Identity, Plugin, Rewrite, WriteRequest,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    mode: String,
}

pub struct Hostile;

fn mode() -> String {
    cairn_plugin_sdk::config::<Config>()
        .map(|c| c.mode)
        .unwrap_or_default()
}

impl Plugin for Hostile {
    fn authenticate(credentials: Credentials) -> Result<Option<Identity>, String> {
        match credentials.token {
            None => Ok(None),
            // Whatever the misbehaviour makes of it; a plain "allow" names the caller.
            Some(token) => match Self::authorize(AuthRequest::new(
                cairn_plugin_sdk::Principal::anonymous(),
                cairn_plugin_sdk::Operation::Range,
            )) {
                Decision::Deny(reason) => Err(reason),
                _ => Ok(Some(Identity {
                    name: token,
                    roles: Vec::new(),
                })),
            },
        }
    }

    fn authorize(_request: AuthRequest) -> Decision {
        Self::check(WriteRequest::new(""))
    }

    fn check(request: WriteRequest) -> Decision {
        match mode().as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("hostile plugin traps on purpose"),
            // A rewrite of an op index that does not exist: the host must refuse it.
            "garbage" => Decision::Rewrite(vec![Rewrite {
                index: u32::MAX,
                value: vec![0xff; 16],
            }]),
            "spam" => {
                // 200 KB of log in one call: well past the host's per-call cap, yet quick
                // enough to finish inside the deadline.
                for i in 0..2_000 {
                    host::log(host::Level::Error, &format!("spam {i} {}", "x".repeat(100)));
                }
                Decision::Allow
            }
            "deny" => Decision::deny("hostile says no"),
            "rewrite" => Decision::Rewrite(
                (0..request.ops.len() as u32)
                    .map(|index| Rewrite {
                        index,
                        value: b"rewritten".to_vec(),
                    })
                    .collect(),
            ),
            _ => Decision::Allow,
        }
    }
}

cairn_plugin_sdk::export_plugin!(Hostile);
