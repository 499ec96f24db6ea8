//! Scheduled backups (cairn-only): the config file's `backup:` section, taken by the
//! leader only, pruned by count and by age (only cairn's backup files, never others in
//! the directory), through the seal plugin, with the `cairn_backup_*` metrics; a full
//! disk fails one backup cleanly while the node serves on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::Server;

use crate::plugins::{metric, plugin, start_with_plugins_and};

/// Files in `dir` (names), sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The sealed backups among `names`.
fn sealed(names: &[String]) -> Vec<&String> {
    names
        .iter()
        .filter(|n| n.starts_with("cairn-") && n.ends_with(".snap.zst.sealed"))
        .collect()
}

/// The Unix time in a backup's name (`cairn-<member>-<secs>-rev<rev>.snap...`).
fn name_time(name: &str) -> u64 {
    let stem = name.split(".snap").next().unwrap();
    let (left, _) = stem.rsplit_once("-rev").unwrap();
    left.rsplit_once('-').unwrap().1.parse().unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Starts a server whose config file has the seal plugin and `backup_yaml` (the
/// `backup:` section, written after the `plugins:` list), plus `flags`.
async fn start_with_backups(backup_yaml: &str, flags: &[&str]) -> Server {
    let key = "5a".repeat(32);
    let yaml = format!(
        "  - {{name: seal, path: {}, hooks: [backup], config: {{key: \"{key}\"}}}}\n{backup_yaml}",
        plugin("backup-seal").display()
    );
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    start_with_plugins_and(&yaml, &flags).await
}

/// Files in the backup directory that are not cairn backups, which pruning must leave.
fn plant_other_files(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let others = ["notes.txt", "cairn-manual-copy.db", "etcd-1000-rev1.snap"];
    for name in others {
        std::fs::write(dir.join(name), "not a cairn backup").unwrap();
    }
    others.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: scheduled backups")]
async fn scheduled_backups_keep_the_newest_count_and_leave_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let others = plant_other_files(&backups);
    let yaml = format!(
        "backup:\n  dir: {}\n  interval: 1s\n  retention:\n    count: 2\n  plugins: [seal]\n",
        backups.display()
    );
    let server = start_with_backups(&yaml, &[]).await;
    let mut client = server.client().await.unwrap();
    client.put("k", "v", None).await.unwrap();
    // Backups every second: once four or more were taken, all but the newest two are
    // pruned (polled: a backup may have just landed beside the two, before its prune).
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = loop {
        let taken = metric(&server, "cairn_backup_duration_seconds_count", &[]).await;
        let names = files(&backups);
        if taken >= 4.0 && sealed(&names).len() == 2 {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "{taken} backups taken: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kept = sealed(&names);
    for other in &others {
        assert!(names.contains(other), "{other} was deleted: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "temp files: {names:?}"
    );
    let last = metric(&server, "cairn_backup_last_success_timestamp_seconds", &[]).await;
    assert!(last as u64 + 3 >= now(), "last success {last}");
    assert_eq!(
        metric(&server, "cairn_backup_failures_total", &[]).await,
        0.0
    );
    assert_eq!(
        metric(&server, "cairn_backup_interval_seconds", &[]).await,
        1.0
    );
    let newest = kept.iter().map(|n| name_time(n)).max().unwrap();
    assert!(newest + 3 >= now(), "newest backup from {newest}");
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: scheduled backups")]
async fn backups_older_than_the_retention_age_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let others = plant_other_files(&backups);
    // A cairn backup from long ago, as another member would have left it.
    let ghost = "cairn-ghost-1000-rev1.snap.zst.sealed".to_string();
    std::fs::write(backups.join(&ghost), "old").unwrap();
    let yaml = format!("backup:\n  dir: {}\n  interval: 1s\n", backups.display());
    let server = start_with_backups(&yaml, &["--backup-retention-age=2s"]).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let names = files(&backups);
    assert!(!names.contains(&ghost), "{names:?}");
    for other in &others {
        assert!(names.contains(other), "{other} was deleted: {names:?}");
    }
    let kept = sealed(&names);
    assert!(!kept.is_empty(), "{names:?}");
    // Pruning runs after each backup: what remains is at most 2 s (and one interval) old.
    let oldest = kept.iter().map(|n| name_time(n)).min().unwrap();
    assert!(
        oldest + 4 >= now(),
        "a backup from {oldest} survived: {names:?}"
    );
    assert!(
        kept.len() <= 4,
        "{} backups kept with a 2 s retention: {names:?}",
        kept.len()
    );
    drop(server);
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: scheduled backups")]
async fn only_the_leader_takes_scheduled_backups() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let options = ClusterOptions {
        extra_args: vec![
            format!("--backup-dir={}", backups.display()),
            "--backup-interval=1s".into(),
        ],
        ..ClusterOptions::new(3)
    };
    let cluster = Cluster::start_with(options).await.unwrap();
    let leader = cluster.leader().await.unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let names = files(&backups);
    let leader_name = cluster.member(leader).name().to_string();
    assert!(!names.is_empty());
    for name in &names {
        assert!(
            name.starts_with(&format!("cairn-{leader_name}-")),
            "a follower took {name}: {names:?}"
        );
    }
    // One a second for ~4.5 s, not one per member.
    assert!(names.len() <= 6, "{names:?}");
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (it needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: backups")]
async fn a_full_disk_fails_the_backup_cleanly_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let disk = SmallDisk::mount(backups.clone(), "2m");
    let flag = format!("--backup-dir={}", backups.display());
    let server = Server::start_with(&[&flag]).await.unwrap();
    let mut client = server.client().await.unwrap();
    client.put("small", "v", None).await.unwrap();
    let http = reqwest::Client::new();
    let backup = || {
        http.post(format!("{}/cairn/v1/backup", server.client_url()))
            .send()
    };
    let first = backup().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let before = files(&backups);
    assert_eq!(before.len(), 1, "{before:?}");
    let first_bytes = std::fs::read(backups.join(&before[0])).unwrap();

    // 4 MiB of values that do not compress: the next snapshot cannot fit in 2 MiB.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in 0..256 {
        let value: Vec<u8> = (0..16 * 1024)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        client.put(format!("big/{i}"), value, None).await.unwrap();
    }
    let failed = backup().await.unwrap();
    assert_eq!(failed.status().as_u16(), 500);
    let body: serde_json::Value = failed.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{body}");
    // The partial file is gone and the older backup is untouched.
    assert_eq!(files(&backups), before);
    assert_eq!(
        std::fs::read(backups.join(&before[0])).unwrap(),
        first_bytes
    );
    assert_eq!(
        metric(&server, "cairn_backup_failures_total", &[]).await,
        1.0
    );
    // The node serves on.
    client.put("after", "v", None).await.unwrap();
    let got = client.get("after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    drop(server);
    drop(disk);
}
