//! SIGHUP reloads the configuration file (own test binary: the signal goes
//! to the whole process).
mod common;
mod ops_common;

use common::*;
use ops_common::*;
use ragfleet_gateway::Config;

fn cfg(u: &Upstream) -> String {
    format!(
        "[[route]]\nprefix = \"/\"\npool = \"p\"\n[reload]\nwatch = false\n\
         [pool.p]\nservers = [{{ addr = \"{}\" }}]\n",
        u.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, cfg(&a)).unwrap();
    let mut c = Config::load(&file).unwrap();
    c.listen.addr = "127.0.0.1:0".parse().unwrap();
    let gw = TestGateway::start_cfg(c).await;
    gw.handle.set_config_path(&file);
    ragfleet_gateway::reload::spawn_sighup(&gw.handle);
    assert_eq!(gw.get("/x").await.body, "a");

    std::fs::write(&file, cfg(&b)).unwrap();
    // Not watching the file: nothing changes until the signal.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(gw.get("/x").await.body, "a");
    let pid = std::process::id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let h = gw.handle.clone();
    let want = vec![b.addr.to_string()];
    assert!(eventually(10, || pool_addrs(&h, "p") == want).await);
    assert_eq!(gw.get("/x").await.body, "b");
}
