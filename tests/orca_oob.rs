//! ORCA out-of-band listeners (gRFC A51, grpc-go's `orca/producer.go`)
//! against a real tonic backend serving `OrcaOobService`: several
//! listeners on one subchannel, each with its own period, share one
//! stream at the smallest period.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::every_address::{EveryAddress, Publish, Rotation};
use support::{eventually, simple_server};
use tonic::{Request, Response, Status};
use tonic_balance::orca::proto::service::open_rca_service_server::{
    OpenRcaService, OpenRcaServiceServer,
};
use tonic_balance::orca::proto::service::OrcaLoadReportRequest;
use tonic_balance::orca::{self, OobListener, OobRegistration, OrcaLoadReport, OrcaOobService};
use tonic_balance::orca::{ReportStream, ServerMetricsRecorder};
use tonic_balance::picker::{CallObserver, DoneInfo};
use tonic_balance::{BalancedChannel, Subchannel};

const TEST_LIMIT: Duration = Duration::from_secs(30);
/// How long a listener may wait for its next reports.
const WAIT: Duration = Duration::from_secs(5);

/// `OrcaOobService` that records the interval each stream asks for.
#[derive(Clone)]
struct RecordingOob {
    service: OrcaOobService,
    asked: Arc<Mutex<Vec<Duration>>>,
}

impl RecordingOob {
    /// The intervals streams asked for, in order, repeats of the same one
    /// in a row (a stream reopened after it failed) counted once.
    fn asked(&self) -> Vec<Duration> {
        let mut asked = self.asked.lock().unwrap().clone();
        asked.dedup();
        asked
    }
}

#[tonic::async_trait]
impl OpenRcaService for RecordingOob {
    type StreamCoreMetricsStream = ReportStream;

    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        let asked = request.get_ref().report_interval;
        let asked = asked.and_then(|d| Duration::try_from(d).ok());
        self.asked.lock().unwrap().push(asked.unwrap_or_default());
        self.service.stream_core_metrics(request).await
    }
}

/// A `Simple` backend that serves ORCA's out-of-band service (reports at
/// most every 10 ms), recording what streams ask for.
async fn oob_backend() -> (std::net::SocketAddr, RecordingOob) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let recorder = ServerMetricsRecorder::new();
    recorder.set_cpu_utilization(0.5);
    let oob = RecordingOob {
        service: OrcaOobService::new(recorder).min_reporting_interval(Duration::from_millis(10)),
        asked: Arc::default(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(simple_server(addr))
            .add_service(OpenRcaServiceServer::new(oob.clone()))
            .serve_with_incoming(incoming),
    );
    (addr, oob)
}

/// Hears nothing: the calls of these tests are not what they are about.
struct NoObserver;

impl CallObserver for NoObserver {
    fn done(&self, _: &DoneInfo<'_>) {}
}

/// A READY channel to `addr` and its subchannel.
async fn subchannel_of(addr: std::net::SocketAddr) -> (BalancedChannel, Subchannel) {
    let seen = Arc::new(Mutex::new(None));
    let spy = seen.clone();
    let policy = EveryAddress::new("spy", Publish::AtEachReady, move |subchannels| {
        *spy.lock().unwrap() = subchannels.first().cloned();
        Arc::new(Rotation::new(subchannels, Arc::new(NoObserver), || {}))
    });
    let channel = BalancedChannel::builder(format!("static:///{addr}"))
        .balancer_builder(policy)
        .connect(Duration::from_secs(10))
        .await
        .unwrap();
    let subchannel = seen.lock().unwrap().clone().expect("a subchannel");
    (channel, subchannel)
}

/// A listener that counts the reports it gets.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn register(&self, subchannel: &Subchannel, period_ms: u64) -> OobRegistration {
        let listener: Arc<dyn OobListener> = Arc::new(self.clone());
        orca::register_oob_listener(subchannel, listener, Duration::from_millis(period_ms))
    }

    /// Waits (at most [`WAIT`]) for `n` more reports than it has now.
    async fn gets_more(&self, n: usize) -> bool {
        let from = self.get();
        eventually(WAIT, || self.get() >= from + n).await
    }
}

impl OobListener for Counter {
    fn on_load_report(&self, _: &OrcaLoadReport) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn two_listeners_on_one_subchannel_both_get_every_report() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (addr, _) = oob_backend().await;
        let (_channel, subchannel) = subchannel_of(addr).await;
        let (first, second) = (Counter::default(), Counter::default());
        let _first = first.register(&subchannel, 20);
        assert!(first.gets_more(3).await, "the first listener gets reports");
        let _second = second.register(&subchannel, 20);
        assert!(
            second.gets_more(3).await,
            "the second listener gets reports"
        );
        assert!(first.gets_more(3).await, "the first one still gets reports");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_one_registration_keeps_the_other_listeners_reports() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (addr, _) = oob_backend().await;
        let (_channel, subchannel) = subchannel_of(addr).await;
        let (kept, dropped) = (Counter::default(), Counter::default());
        let _kept = kept.register(&subchannel, 20);
        let registration = dropped.register(&subchannel, 20);
        assert!(dropped.gets_more(3).await, "both listeners get reports");
        drop(registration);
        // Reports already on their way may still arrive: let them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after_drop = dropped.get();
        assert!(
            kept.gets_more(5).await,
            "the kept listener still gets reports"
        );
        assert_eq!(dropped.get(), after_drop, "a dropped listener gets no more");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_stream_asks_for_the_smallest_period_registered() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (addr, server) = oob_backend().await;
        let (_channel, subchannel) = subchannel_of(addr).await;
        let ms = Duration::from_millis;
        let (slow, fast, slower) = (Counter::default(), Counter::default(), Counter::default());
        let _slow = slow.register(&subchannel, 200);
        assert!(slow.gets_more(2).await);
        assert_eq!(server.asked(), [ms(200)]);

        // A smaller period reopens the stream with it.
        let fast_registration = fast.register(&subchannel, 30);
        assert!(fast.gets_more(2).await);
        assert_eq!(server.asked(), [ms(200), ms(30)]);

        // A larger one keeps the stream as it is.
        let _slower = slower.register(&subchannel, 1000);
        assert!(slower.gets_more(3).await);
        assert_eq!(server.asked(), [ms(200), ms(30)]);

        // Dropping the smallest one goes back to the smallest left.
        drop(fast_registration);
        let back = eventually(WAIT, || server.asked().len() == 3).await;
        assert!(back, "the stream was not reopened: {:?}", server.asked());
        assert_eq!(server.asked(), [ms(200), ms(30), ms(200)]);
        assert!(slow.gets_more(2).await);
    })
    .await
    .unwrap();
}
