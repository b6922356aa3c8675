//! Where a spliced tunnel may go, seen through the proxy: a host written
//! as a number (`2130706433`, `0x7f.1`) is an IP address, judged by the
//! IP-literal rule, and refused before anything is dialled.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use client::*;
use proxy::*;

#[tokio::test]
async fn numeric_host_names_are_ip_literals_and_refused_before_any_dial() {
    // allow_ip_literals defaults to false; other = "tunnel" would splice a name.
    let (cfg, dir) = config_with_ca("egress-numeric", "[intercept]\nother = \"tunnel\"\n");
    let proxy = start_proxy(cfg, dir).await;
    // Every spelling here is 127.0.0.1 to inet_aton, so even the code
    // before this rule could only have reached loopback.
    for target in [
        "2130706433:443",
        "0x7f000001:443",
        "0177.0.0.1:443",
        "127.1:443",
        "0x7f.1:443",
    ] {
        let (mut s, head) = raw_connect(proxy.addr, target).await;
        assert_eq!(status_of(&head), Some(403), "CONNECT {target}: {head}");
        let body = read_body(&mut s, &head).await;
        assert!(
            body.contains("IP address 127.0.0.1") && body.contains("allow_ip_literals"),
            "CONNECT {target} must be refused by the IP-literal rule: {body}"
        );
    }
    assert!(proxy.stop().await);
}
