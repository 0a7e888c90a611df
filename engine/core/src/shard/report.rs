//! What the control side reads: snapshots of legs and plans, and statistics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use earshot_engine_api::{EngineSnapshot, IpFamily, LegActivity, LegInfo, ShardStats};
use earshot_media::plan::OutputPlan;

use super::Shard;

impl Shard {
    pub(super) fn fill_snapshot(&self, snap: &mut EngineSnapshot) {
        for (slot, leg) in self.legs.iter().enumerate() {
            if let Some(leg) = leg {
                snap.legs.push(self.leg_info(slot as u32));
                snap.activity.push(LegActivity {
                    leg: leg.id,
                    first_packet_seen: leg.first_packet_seen,
                    packets_in: leg.packets_in,
                    stream: leg.media.as_ref().map(|m| m.stream_base()),
                });
            }
        }
        for sess in self.sessions.iter().flatten() {
            snap.plans.push(sess.api_plan.clone());
        }
    }

    pub(super) fn fill_stats(&self, s: &mut ShardStats) {
        s.shard = self.cfg.index;
        s.legs = self.leg_count() as u64;
        s.sessions = self.session_count() as u64;
        let (mut fwd, mut mixed, mut silent) = (0u64, 0u64, 0u64);
        for sess in self.sessions.iter().flatten() {
            if sess.mixing {
                mixed += 1;
            } else if (0..sess.len).any(|l| {
                l < sess.plan.legs() && matches!(sess.plan.output(l), OutputPlan::Forward { .. })
            }) {
                fwd += 1;
            } else {
                silent += 1;
            }
        }
        s.sessions_by_mode = vec![
            ("forward_only".into(), fwd),
            ("mixed".into(), mixed),
            ("silent".into(), silent),
        ];
        self.counters.fill(s);
    }

    pub(super) fn leg_info(&self, slot: u32) -> LegInfo {
        let leg = self.leg(slot);
        let ip: IpAddr = match (leg.local_ip, leg.family) {
            (Some(ip), _) => ip,
            (None, IpFamily::V4) => IpAddr::V4(self.cfg.local_v4.unwrap_or(Ipv4Addr::LOCALHOST)),
            (None, IpFamily::V6) => IpAddr::V6(self.cfg.local_v6.unwrap_or(Ipv6Addr::LOCALHOST)),
        };
        // A leg allocated for rtcp-mux holds one port: RTCP shares it from the start.
        let mux = !leg.paired;
        LegInfo {
            leg: leg.id,
            session: self.session(leg.session).key.clone(),
            leg_key: leg.key.clone(),
            local: SocketAddr::new(ip, leg.port),
            local_rtcp: SocketAddr::new(ip, if mux { leg.port } else { leg.port + 1 }),
            media: leg.media.as_ref().map(|m| m.config.clone()),
            remote: leg.remote,
        }
    }
}
