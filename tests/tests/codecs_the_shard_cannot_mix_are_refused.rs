//! The API knows G.722, Opus and L16 (issue 12), but this build's shard mixes and
//! forwards G.711 only. Configuring a leg with another codec is refused as an invalid
//! `codec` argument, never a panic: Opus with libopus's own load error when the library
//! is missing, otherwise with "not mixed by this engine yet". The refused leg keeps its
//! working PCMU configuration: the call goes on.

use earshot_core::shard::ShardCommand;
use earshot_engine_api::{Codec, EngineError, MediaConfig, SampleRate};
use earshot_testkit::fixtures::pcmu_media;
use earshot_tests::sim::{AGENT_HZ, CUSTOMER_HZ, Hearing, PartyConfig, Sim, before, ms, seed_for};

#[test]
fn codecs_the_shard_cannot_mix_are_refused() {
    let mut sim = Sim::new("codec_refused", seed_for("codec_refused"));
    let c = sim.add_party(PartyConfig::tone("customer", CUSTOMER_HZ));
    let a = sim.add_party(PartyConfig::tone("agent", AGENT_HZ));
    sim.set_hearing(&Hearing::call(c, a));
    sim.run_for(ms(500));

    let opus_missing = earshot_media::codec::opus_available().err();
    for (codec, pt, ptime_ms) in [
        (Codec::Opus, 111, 20),
        (Codec::G722, 9, 20),
        (Codec::L16(SampleRate::Hz16000), 96, 20),
        (Codec::L16(SampleRate::Hz48000), 96, 10),
    ] {
        let media = MediaConfig {
            codec,
            payload_type: pt,
            ptime_ms,
            telephone_event_pt: None,
            ..pcmu_media(Some(sim.addr(c)))
        };
        media
            .validate()
            .expect("a valid MediaConfig: the API accepts it");
        let err = sim
            .command(ShardCommand::ConfigureLeg {
                leg: sim.leg(c),
                media,
            })
            .expect_err("the shard cannot carry it yet");
        let EngineError::InvalidArgument { field, message } = err else {
            panic!("{codec:?}: not an invalid argument: {err:?}");
        };
        assert_eq!(field, "codec", "{codec:?}: {message}");
        match (&opus_missing, codec) {
            (Some(e), Codec::Opus) => assert!(
                message.contains(&e.to_string()),
                "Opus without libopus says why: {message}"
            ),
            _ => assert!(message.contains("not mixed"), "{codec:?}: {message}"),
        }
    }
    // The refusals changed nothing: the agent still hears the customer.
    let from = sim.now();
    sim.run_for(ms(1_000));
    let l = sim.listener(a);
    let to = before(sim.now(), ms(100));
    assert!(
        l.hears(CUSTOMER_HZ, from + ms(100), to),
        "{:?}",
        l.tone_report(CUSTOMER_HZ, from + ms(100), to)
    );
}
