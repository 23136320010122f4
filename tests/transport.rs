//! The transport against real servers on 127.0.0.1: what goes on the wire
//! (headers), how connections are made (unix sockets, the user's own
//! connector) and how they are run (settings, pools).

mod support;

use std::time::Duration;

use support::proto::simple_client::SimpleClient;
use support::proto::SimpleRequest;
use support::{static_target, Backend};
use tonic_balance::BalancedChannel;

const TEST_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn connection_specific_headers_from_a_tower_layer_are_stripped_before_sending() {
    tokio::time::timeout(TEST_LIMIT, async {
        let backend = Backend::start();
        let channel = BalancedChannel::builder(static_target(&[&backend]))
            .connect(Duration::from_secs(10))
            .await
            .unwrap();
        // HTTP/1 headers a tower layer or interceptor might add; HTTP/2
        // forbids each of them (RFC 9113, 8.2.2), and `h2` refuses the
        // request unless they are removed.
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
        ] {
            let layered = tower::ServiceBuilder::new()
                .map_request(move |mut request: http::Request<tonic::body::Body>| {
                    request
                        .headers_mut()
                        .insert(name, http::HeaderValue::from_static(value));
                    request
                })
                .service(channel.clone());
            let mut client = SimpleClient::new(layered);
            let reply = client
                .route(SimpleRequest {
                    data: name.to_owned(),
                })
                .await;
            assert!(reply.is_ok(), "{name}: {value}: {reply:?}");
        }
        assert_eq!(backend.calls(), 6);
    })
    .await
    .expect("bounded");
}
