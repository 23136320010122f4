//! Interop with gRPC's C-core: a Python `grpcio` server behind the channel.

mod support;

use std::time::Duration;

use support::grpcio::GrpcioServer;
use support::proto::simple_client::SimpleClient;
use support::route;
use tonic_balance::BalancedChannel;

#[tokio::test]
async fn a_grpcio_server_serves_calls_through_the_channel() {
    let server = GrpcioServer::start(&[]);
    let channel = BalancedChannel::builder(format!("static:///{}", server.addr))
        .connect(Duration::from_secs(10))
        .await
        .expect("READY");
    let mut client = SimpleClient::new(channel);
    for _ in 0..5 {
        let served_by = route(&mut client, "hi").await.expect("call");
        assert_eq!(served_by, server.addr.to_string());
    }
}
