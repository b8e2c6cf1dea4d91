use std::time::Duration;
use rollgate_tests::*;

#[test]
fn scratch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start_secure(dir.path())?;
    let s = etcd.security.clone().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let pw = s.user_password()?;
        let ep = [etcd.endpoint.as_str()];
        let mut a = etcd_client::Client::connect(ep, Some(s.tls_options()?.with_user(ETCD_USER, pw.clone()))).await?;
        let mut b = etcd_client::Client::connect(ep, Some(s.tls_options()?.with_user(ETCD_USER, pw.clone()).with_auto_token_refresh(true))).await?;
        let mut root = etcd.client().await?;
        let lease = b.lease_grant(2, None).await?.id();
        let (mut keeper, mut ks) = b.lease_keep_alive(lease).await?;
        let mut ws = b.watch("/rollgate/", Some(etcd_client::WatchOptions::new().with_prefix())).await?;
        println!("a get: {:?}", a.get("/rollgate/x", None).await.map(|_| ()));
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            keeper.keep_alive().await?;
            let r = ks.message().await;
            println!("t={}ms keepalive: {:?}", (i+1)*600, r.map(|m| m.map(|m| m.ttl())));
        }
        println!("a get after idle: {:?}", a.get("/rollgate/x", None).await.map(|_| ()));
        println!("b get after idle: {:?}", b.get("/rollgate/x", None).await.map(|_| ()));
        root.put("/rollgate/y", "1", None).await?;
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(2), ws.message()).await;
            println!("watch after idle: {:?}", m.map(|r| r.map(|o| o.map(|w| (w.created(), w.canceled(), w.cancel_reason().to_string(), w.events().len())))));
        }
        let mut c = etcd_client::Client::connect(ep, Some(s.tls_options()?.with_user(ETCD_USER, pw.clone()).with_auto_token_refresh(true))).await?;
        let mut d = c.clone();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut ws3 = c.watch("/rollgate/", Some(etcd_client::WatchOptions::new().with_prefix())).await;
        println!("watch as first op after idle: {:?}", ws3.as_ref().map(|_| ()));
        root.put("/rollgate/y", "3", None).await?;
        if let Ok(ws3) = ws3.as_mut() {
            for _ in 0..2 {
                let m = tokio::time::timeout(Duration::from_secs(2), ws3.message()).await;
                println!("first-op watch: {:?}", m.map(|r| r.map(|o| o.map(|w| (w.created(), w.canceled(), w.cancel_reason().to_string(), w.events().len())))));
            }
        }
        let l2 = d.lease_grant(5, None).await;
        println!("clone lease grant after: {:?}", l2.as_ref().map(|_| ()));
        let mut e = etcd_client::Client::connect(ep, Some(s.tls_options()?.with_user(ETCD_USER, pw.clone()).with_auto_token_refresh(true))).await?;
        let l3 = e.lease_grant(30, None).await?.id();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = e.campaign("/rollgate/leader3", "me", l3).await;
        println!("campaign as first op after idle: {:?}", r.map(|_| ()));
        let mut f = etcd_client::Client::connect(ep, Some(s.tls_options()?.with_user(ETCD_USER, pw.clone()).with_auto_token_refresh(true))).await?;
        let l4 = f.lease_grant(30, None).await?.id();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = f.lease_keep_alive(l4).await;
        println!("keepalive open as first op after idle: {:?}", r.map(|_| ()));
        let mut ws2 = b.watch("/rollgate/", Some(etcd_client::WatchOptions::new().with_prefix())).await?;
        root.put("/rollgate/y", "2", None).await?;
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(2), ws2.message()).await;
            println!("new watch after idle: {:?}", m.map(|r| r.map(|o| o.map(|w| (w.created(), w.canceled(), w.cancel_reason().to_string(), w.events().len())))));
        }
        let r = b.put("/rollgate/z", "1", Some(etcd_client::PutOptions::new().with_lease(lease))).await;
        println!("b put with lease: {:?}", r.map(|_| ()));
        let r = b.campaign("/rollgate/leader", "me", lease).await;
        println!("b campaign: {:?}", r.map(|_| ()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let r = b.campaign("/rollgate/leader2", "me", lease).await;
        println!("b campaign after idle (lease keepalive stopped, lease expired?): {:?}", r.map(|_| ()));
        anyhow::Ok(())
    })
}
