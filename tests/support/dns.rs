//! An authoritative DNS server for `test.` on 127.0.0.1 (hickory-server,
//! UDP and TCP on one port) whose zone a test changes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;

/// An authoritative server for `test.` on 127.0.0.1 (UDP and TCP, one port).
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    server: Option<Server<Catalog>>,
    serial: u32,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().unwrap();
        let origin = Name::from_ascii("test.").unwrap();
        let zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("admin.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            1,
        );
        assert!(
            zone.upsert(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1)
                .await
        );
        let zone = Arc::new(zone);
        let server = serve(&zone, udp, tcp);
        DnsServer {
            addr,
            zone,
            server: Some(server),
            serial: 1,
        }
    }

    /// Answers again, on the same address and with the same zone.
    pub async fn restart(&mut self) {
        self.stop().await;
        let udp = tokio::net::UdpSocket::bind(self.addr).await.unwrap();
        let tcp = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.server = Some(serve(&self.zone, udp, tcp));
    }

    /// Replaces the A and AAAA records of `name` (relative to `test.`).
    pub async fn set(&mut self, name: &str, ips: &[&str]) {
        let name = Name::from_ascii(format!("{name}.")).unwrap();
        {
            let mut records = self.zone.records_mut().await;
            records.remove(&RrKey::new(LowerName::new(&name), RecordType::A));
            records.remove(&RrKey::new(LowerName::new(&name), RecordType::AAAA));
        }
        self.serial += 1;
        for ip in ips {
            let rdata = match ip.parse::<IpAddr>().unwrap() {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            let record = Record::from_rdata(name.clone(), 5, rdata);
            assert!(self.zone.upsert(record, self.serial).await);
        }
    }

    /// Stops answering: both sockets close.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.shutdown_gracefully().await.unwrap();
        }
    }

    /// `dns://127.0.0.1:PORT/{endpoint}`.
    pub fn target(&self, endpoint: &str) -> String {
        format!("dns://{}/{endpoint}", self.addr)
    }
}

fn serve(
    zone: &Arc<InMemoryZoneHandler>,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
) -> Server<Catalog> {
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::new(&Name::from_ascii("test.").unwrap()),
        vec![zone.clone()],
    );
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 16);
    server
}

async fn bind_udp_and_tcp() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}
