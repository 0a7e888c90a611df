//! A supervisor whose phone rings (auto_answer = false) has a leg that learns its remote
//! from the first packet. When the phone answers, the control side reconfigures the leg
//! (it no longer needs to report the first packet). A sender racing the phone right
//! after that reconfiguration must not take the leg over: the learned source stays
//! locked, the racer's RTP and RTCP are dropped as `wrong_source`, and nothing of the
//! call is ever sent to it (issue 9, item 8: the racer used to receive the mix, 6 of 6
//! trials, because reconfiguring reset the source lock).

use std::net::SocketAddr;

use earshot_core::ShardEvent;
use earshot_core::shard::ShardCommand;
use earshot_engine_api::{Codec, MediaConfig};
use earshot_tests::sim::{
    AGENT_HZ, CUSTOMER_HZ, Hearing, Mode, PartyConfig, SUPERVISOR_HZ, Sim, before, ms, seed_for,
};

fn supervisor_media(report_first_packet: bool) -> MediaConfig {
    MediaConfig {
        remote: None,
        codec: Codec::Pcmu,
        payload_type: 0,
        ptime_ms: 20,
        telephone_event_pt: Some(101),
        rtcp_mux: true,
        report_first_packet,
        max_ptime_ms: None,
        opus: Default::default(),
        srtp: None,
        strict_source: None,
        quiet_when_unheard: false,
    }
}

/// A valid 20 ms PCMU packet from the racer.
fn racer_rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![
        0x80,
        0,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        0,
        0,
        0x0b,
        0xad,
        0xf0,
        0x0d,
    ];
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend(std::iter::repeat_n(0x2a, 160));
    p
}

#[test]
fn a_ringing_supervisor_leg_cannot_be_hijacked() {
    for mode in [Mode::Monitor, Mode::Coach] {
        let label = format!("hijack_{mode:?}");
        let mut sim = Sim::new(&label, seed_for(&label));
        let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
        let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
        let s = sim.add_party(PartyConfig {
            latch: true,
            ..PartyConfig::tone("supervisor", SUPERVISOR_HZ)
        });
        // The phone rings: it sends nothing yet; the leg waits to learn its remote.
        sim.talker_mut(s).set_active(false);
        sim.command(ShardCommand::ConfigureLeg {
            leg: sim.leg(s),
            media: supervisor_media(true),
        })
        .unwrap();
        sim.set_hearing(&Hearing::call(c, a).with(s, a, mode));
        sim.run_for(ms(300));

        // The phone answers; the engine reports its first packet.
        sim.talker_mut(s).set_active(true);
        let mut waited = 0;
        while !sim
            .take_events()
            .contains(&ShardEvent::FirstPacket(sim.leg(s)))
        {
            sim.run_for(ms(5));
            waited += 5;
            assert!(
                waited < 200,
                "{mode:?}: no first packet from the answering phone"
            );
        }
        // The control side reacts by reconfiguring the leg; a racer sends at once, and
        // keeps sending, RTP and RTCP.
        sim.command(ShardCommand::ConfigureLeg {
            leg: sim.leg(s),
            media: supervisor_media(false),
        })
        .unwrap();
        let racer: SocketAddr = "10.66.6.6:7078".parse().unwrap();
        let port = sim.engine_port(s);
        let wrong_before = sim.drops("wrong_source");
        let start = sim.now();
        let mut injected = 0u64;
        for k in 0..50u16 {
            let at = start + ms(u64::from(k) * 2);
            sim.inject_at(at, port, racer, racer_rtp(k));
            sim.inject_at(at, port, racer, vec![0x80, 201, 0, 1, 0, 0, 0, 1]);
            injected += 2;
        }
        sim.run_for(ms(1_500));

        assert_eq!(
            sim.drops("wrong_source") - wrong_before,
            injected,
            "{mode:?}: every racer datagram is dropped as wrong_source"
        );
        assert_eq!(
            sim.unroutable(),
            0,
            "{mode:?}: the engine sent something to an address no party has (the racer)"
        );
        // The real phone still gets the call, and is still heard where it should be.
        let (from, to) = (start + ms(400), before(sim.now(), ms(100)));
        assert!(
            sim.listener(s).hears(AGENT_HZ, from, to),
            "{mode:?}: the supervisor lost the agent"
        );
        let agent_hears_supervisor = sim.listener(a).hears(SUPERVISOR_HZ, from, to);
        assert_eq!(
            agent_hears_supervisor,
            mode == Mode::Coach,
            "{mode:?}: the agent hears the supervisor exactly when coached"
        );
    }
}
