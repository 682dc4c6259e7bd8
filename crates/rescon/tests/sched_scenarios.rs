//! The standard scenarios, the two RCLinux experiments among them, on the hierarchical policy
//! with a fake clock: every reported container within 0.5 percentage points of its entitlement.

use rescon::Registry;
use rescon::sched::Hierarchical;
use rescon::sim::scenarios;

const SECOND: u64 = 1_000_000_000;

#[test]
fn every_scenario_delivers_its_entitlement() {
    let registry = Registry::new();
    for s in scenarios(&registry) {
        let out = s.run(
            Box::new(Hierarchical::new(&registry)),
            60 * SECOND,
            1_000_000,
        );
        for o in &out {
            println!(
                "{:32} {:24} entitled {:.4} delivered {:.4}",
                s.name, o.name, o.entitled, o.delivered
            );
        }
        for o in &out {
            assert!(
                (o.entitled - o.delivered).abs() < 0.005,
                "{}: {} entitled {:.4} delivered {:.4}",
                s.name,
                o.name,
                o.entitled,
                o.delivered
            );
        }
    }
}
