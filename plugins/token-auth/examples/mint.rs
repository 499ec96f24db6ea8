//! Mints a token-auth token: `cargo run -p token-auth --example mint -- SECRET SUBJECT
//! ROLE[,ROLE...] TTL_SECONDS`. Prints the token for gRPC metadata `token`.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [secret, sub, roles, ttl] = args.as_slice() else {
        eprintln!("usage: mint SECRET SUBJECT ROLE[,ROLE...] TTL_SECONDS");
        std::process::exit(2);
    };
    let Ok(ttl) = ttl.parse::<u64>() else {
        eprintln!("TTL_SECONDS must be a number of seconds");
        std::process::exit(2);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = token_auth::Claims {
        sub: sub.clone(),
        roles: roles
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        exp: now + ttl,
    };
    println!("{}", token_auth::mint(secret.as_bytes(), &claims));
}
