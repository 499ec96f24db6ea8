//! `cairn plugin new NAME`: a plugin crate that builds for wasm32-wasip2 as it is, with the
//! SDK's 20-line example (refuse values over a configured size), a native unit test and a
//! README saying how to build, check and configure it.

use std::path::{Path, PathBuf};

use super::PluginError;

/// Options of `plugin new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The crate's name: lowercase letters, digits and '-'.
    pub name: String,
    /// The directory to create the crate in.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The cairn-plugin-sdk crate to depend on, by path [default: this cairn's source tree
    /// if it is still there, else the published version].
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// The SDK of the source tree this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");
const SDK_VERSION: &str = "0.1";

pub fn run(args: &NewArgs) -> Result<(), PluginError> {
    let name = args.name.as_str();
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(PluginError::Scaffold(format!(
            "invalid plugin name {name:?}: use lowercase letters, digits and '-', starting with a letter"
        )));
    }
    let root = args.dir.join(name);
    if root.exists() {
        return Err(PluginError::Scaffold(format!(
            "{} already exists",
            root.display()
        )));
    }
    let sdk = match &args.sdk {
        Some(path) => Some(absolute(path)?),
        None => std::fs::canonicalize(BUILT_FROM_SDK).ok(),
    };
    let sdk_dep = match sdk {
        Some(path) => format!("{{ path = {:?} }}", path.display().to_string()),
        None => format!("{SDK_VERSION:?}"),
    };
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk_dep)),
        ("src/lib.rs", LIB_RS.to_string()),
        ("README.md", readme(name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        let path = root.join(file);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        written.map_err(|e| PluginError::Scaffold(format!("writing {}: {e}", path.display())))?;
    }
    println!("created {}", root.display());
    println!(
        "next: cd {} && cargo test && cargo build --release --target wasm32-wasip2",
        root.display()
    );
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, PluginError> {
    std::fs::canonicalize(path)
        .map_err(|e| PluginError::Scaffold(format!("--sdk {}: {e}", path.display())))
}

fn cargo_toml(name: &str, sdk_dep: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
# cdylib: the wasm component; rlib: so `cargo test` links the logic natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
cairn-plugin-sdk = {sdk_dep}

[dev-dependencies]
serde_json = "1"

[profile.release]
# Small, fast components: the node compiles each once at load.
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A workspace of its own, so the crate builds wherever it is created.
[workspace]
"#
    )
}

const LIB_RS: &str = r#"//! A cairn admission plugin: refuses put values larger than the configured number of
//! bytes (`config: 1024` in the node's `plugins:` entry).

use cairn_plugin_sdk::{Decision, Plugin, WriteOp, WriteRequest};

/// Refuses values larger than the configured `max` bytes.
pub struct MaxSize;

impl Plugin for MaxSize {
    fn check(request: WriteRequest) -> Decision {
        let max: u64 = cairn_plugin_sdk::config().unwrap_or(1024);
        for op in &request.ops {
            if let WriteOp::Put(put) = op {
                if put.value_size > max {
                    return Decision::deny(format!("value over {max} bytes"));
                }
            }
        }
        Decision::Allow
    }
}

cairn_plugin_sdk::export_plugin!(MaxSize);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_plugin_sdk::testing::Harness;

    #[test]
    fn values_over_the_limit_are_refused() {
        let _host = Harness::new().config(serde_json::json!(2));
        let request = WriteRequest::new("alice").put("/k", "abc");
        assert_eq!(
            MaxSize::check(request),
            Decision::deny("value over 2 bytes")
        );
        assert!(MaxSize::check(WriteRequest::new("alice").put("/k", "ab")).is_allowed());
    }
}
"#;

fn readme(name: &str) -> String {
    let file = name.replace('-', "_");
    format!(
        r#"# {name}

A cairn admission plugin, made by `cairn plugin new`. As created it refuses put values
larger than its `config` number of bytes (default 1024); change `check` in `src/lib.rs`.

```sh
cargo test                                       # the logic, natively, no server
rustup target add wasm32-wasip2                  # once
cargo build --release --target wasm32-wasip2
cairn plugin check target/wasm32-wasip2/release/{file}.wasm
```

Then name it in the node's config file and start the node with `--config-file` (or, on a
running node, `cairn plugin reload`):

```yaml
plugins:
  - name: {name}
    path: /path/to/target/wasm32-wasip2/release/{file}.wasm
    hooks: [admission]
    prefixes: [/]
    config: 1024
```

See the cairn-plugin-sdk README for the hooks, host functions, limits and the test harness.
"#
    )
}
