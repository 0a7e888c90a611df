//! Each leg gets RTCP (RFC 3550): a sender report for the stream the engine sends it,
//! with a report block about the stream it sends the engine and an SDES CNAME, about every
//! 5 s (randomised over 2.5..7.5 s), on the RTP port (rtcp-mux).

use earshot_media::wire::rtcp::{RtcpRepr, packets};
use earshot_tests::sim::{AGENT_HZ, CUSTOMER_HZ, Hearing, Link, PartyConfig, Sim, ms, seed_for};

#[test]
fn rtcp_reports_describe_each_leg() {
    let mut sim = Sim::new("rtcp_reports", seed_for("rtcp_reports"));
    let lossy = |name: &str, hz| PartyConfig {
        uplink: Link::with_jitter(5, 10).lossy(0.02),
        ..PartyConfig::tone(name, hz)
    };
    let c = sim.add_party(lossy("customer", CUSTOMER_HZ));
    let a = sim.add_party(lossy("agent", AGENT_HZ));
    sim.set_hearing(&Hearing::call(c, a));
    sim.run_for(ms(30_000));
    for me in [c, a] {
        let l = sim.listener(me);
        let reports = l.rtcp();
        assert!(
            (4..=12).contains(&reports.len()),
            "{}: {} RTCP compounds in 30 s",
            sim.name(me),
            reports.len()
        );
        let audio_ssrc = l.audio().next().expect("audio received").ssrc;
        let my_ssrc = sim.talker(me).ssrc();
        let (_, last) = reports.last().expect("a report");
        let mut saw_sr = false;
        let mut saw_cname = false;
        for p in packets(last) {
            match RtcpRepr::parse(&p.expect("valid RTCP")).expect("parsable") {
                RtcpRepr::SenderReport(sr) => {
                    saw_sr = true;
                    assert_eq!(sr.ssrc.0, audio_ssrc, "SR describes the stream sent to me");
                    assert!(sr.sender_info.packet_count > 500);
                    let block = sr.reports.iter().next().expect("a report block");
                    assert_eq!(block.ssrc.0, my_ssrc, "the block is about my stream");
                    assert!(block.ext_highest_seq > 0);
                    assert!(block.cumulative_lost > 0, "2% uplink loss shows: {block:?}");
                }
                RtcpRepr::SourceDescription(chunks) => {
                    saw_cname = chunks
                        .iter()
                        .any(|c| c.items.iter().any(|i| !i.value.is_empty()));
                }
                _ => {}
            }
        }
        assert!(
            saw_sr && saw_cname,
            "{}: SR {saw_sr}, CNAME {saw_cname}",
            sim.name(me)
        );
    }
}
