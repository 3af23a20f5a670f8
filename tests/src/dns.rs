//! A real DNS server for the SRV discovery tests: authoritative answers over UDP (and TCP) on a
//! free loopback port, built on hickory's message codec. The records can change while it runs,
//! and it can be told to stop answering (a DNS timeout). Members reach it through detcd's
//! `--discovery-srv-resolver`; `dig @ip -p port` reaches it too.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The zone served: SRV records by name, A records by host (names without the trailing dot,
/// compared case-insensitively).
#[derive(Clone, Debug, Default)]
pub struct Zone {
    pub srv: BTreeMap<String, Vec<(u16, u16, u16, String)>>,
    pub a: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl Zone {
    /// Adds an SRV record `name -> target:port` (priority and weight 0).
    pub fn srv(&mut self, name: &str, target: &str, port: u16) -> &mut Self {
        self.srv
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push((0, 0, port, target.to_string()));
        self
    }
    /// Adds an A record.
    pub fn a(&mut self, host: &str, ip: &str) -> &mut Self {
        self.a
            .entry(host.to_ascii_lowercase())
            .or_default()
            .push(ip.parse().expect("IPv4 address"));
        self
    }
}

/// A running DNS server. Stopped on drop.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Questions answered so far.
    pub queries: Arc<AtomicU64>,
}

fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let mut resp = Message::new(req.metadata.id, MessageType::Response, req.metadata.op_code);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = false;
    let mut found_name = false;
    for q in &req.queries {
        resp.add_query(q.clone());
        let name = q.name().to_utf8();
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(records) = zone.srv.get(&key) {
            found_name = true;
            if q.query_type() == RecordType::SRV {
                for (prio, weight, port, target) in records {
                    let target =
                        Name::from_utf8(format!("{}.", target.trim_end_matches('.'))).ok()?;
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        300,
                        RData::SRV(SRV::new(*prio, *weight, *port, target)),
                    ));
                }
            }
        }
        if let Some(addrs) = zone.a.get(&key) {
            found_name = true;
            if q.query_type() == RecordType::A {
                for ip in addrs {
                    resp.add_answer(Record::from_rdata(q.name().clone(), 300, RData::A(A(*ip))));
                }
            }
        }
    }
    if !found_name {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.to_vec().ok()
}

impl DnsServer {
    /// Serves `zone` on `ip` (a free port is picked).
    pub fn start(ip: &str, zone: Zone) -> DnsServer {
        // A port free for both UDP and TCP.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((ip, 0)).expect("bind DNS UDP socket");
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind((ip, port)) {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone));
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        {
            let (zone, silent, stop, queries) =
                (zone.clone(), silent.clone(), stop.clone(), queries.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    if silent.load(Ordering::Relaxed) {
                        continue;
                    }
                    let z = zone.lock().unwrap().clone();
                    if let Some(out) = answer(&z, &buf[..n]) {
                        queries.fetch_add(1, Ordering::Relaxed);
                        let _ = udp.send_to(&out, from);
                    }
                }
            });
        }
        tcp.set_nonblocking(true).unwrap();
        {
            let (zone, silent, stop) = (zone.clone(), silent.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() || silent.load(Ordering::Relaxed) {
                        continue;
                    }
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut q).is_err() {
                        continue;
                    }
                    let z = zone.lock().unwrap().clone();
                    if let Some(out) = answer(&z, &q) {
                        let _ = s.write_all(&(out.len() as u16).to_be_bytes());
                        let _ = s.write_all(&out);
                    }
                }
            });
        }
        DnsServer {
            addr,
            zone,
            silent,
            stop,
            queries,
        }
    }

    /// `ip:port`, as `--discovery-srv-resolver` takes it.
    pub fn resolver_arg(&self) -> String {
        self.addr.to_string()
    }

    /// Replaces the zone.
    pub fn set_zone(&self, zone: Zone) {
        *self.zone.lock().unwrap() = zone;
    }

    /// Stops (true) or resumes (false) answering: the resolver then times out.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_srv_a_and_nxdomain() {
        let mut z = Zone::default();
        z.srv("_etcd-server._tcp.example.com", "infra0.example.com.", 2380)
            .a("infra0.example.com", "127.0.50.10");
        let q = |name: &str, t: RecordType| {
            let mut m = Message::query();
            m.metadata.id = 7;
            m.add_query(hickory_proto::op::Query::query(
                Name::from_utf8(name).unwrap(),
                t,
            ));
            Message::from_vec(&answer(&z, &m.to_vec().unwrap()).unwrap()).unwrap()
        };
        let r = q("_etcd-server._tcp.example.com.", RecordType::SRV);
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.answers.len(), 1);
        let r = q("infra0.example.com.", RecordType::A);
        assert_eq!(r.answers.len(), 1);
        let r = q("nowhere.example.com.", RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        // A known name without records of that type: an empty answer, not NXDOMAIN.
        let r = q("infra0.example.com.", RecordType::AAAA);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert!(answer(&z, b"garbage").is_none());
    }
}
