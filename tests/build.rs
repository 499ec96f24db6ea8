//! Tells the tests which server they run against, at compile time, so that tests of
//! cairn-only behaviour are compiled as `#[ignore]`d under `CAIRN_TEST_SERVER=etcd` and
//! libtest reports them as ignored rather than passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(against_etcd)");
    println!("cargo::rerun-if-env-changed=CAIRN_TEST_SERVER");
    if std::env::var("CAIRN_TEST_SERVER").as_deref() == Ok("etcd") {
        println!("cargo::rustc-cfg=against_etcd");
    }
}
