//! Hosts in network namespaces, for partitions at the IP layer (needs
//! root, as CI runs).
//!
//! `Hosts::create(n)` makes `n` namespaces, each with one veth interface on
//! a bridge in the test's own namespace: host `i` has address
//! `10.213.K.(i+1)` and the bridge (the test process) `10.213.K.254`, where
//! K is picked per process so concurrent test binaries do not collide. The
//! nodes run inside with `ip netns exec` ([`crate::common::Builder::netns`]);
//! the test reaches every node over the bridge.
//!
//! `partition(a, b)` adds blackhole routes between the two sides in each
//! side's namespace: packets between them are dropped silently in both
//! directions, exactly as a firewall DROP rule would, while the test can
//! still talk to every node. `heal()` removes them. Dropping `Hosts`
//! deletes the namespaces and the bridge.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Mutex;

/// A set of network-namespace hosts on one bridge.
pub struct Hosts {
    tag: String,
    subnet: u8,
    count: usize,
    /// Blackhole routes in place, as (namespace index, blocked address).
    routes: Mutex<Vec<(usize, IpAddr)>>,
}

/// True when this process may create network namespaces (it is root).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// Creates `count` hosts on a fresh bridge.
    pub fn create(count: usize) -> Result<Hosts, String> {
        let pid = std::process::id();
        let hosts = Hosts {
            tag: format!("av{:05x}", pid & 0xfffff),
            subnet: (pid % 200) as u8 + 20,
            count,
            routes: Mutex::new(Vec::new()),
        };
        hosts.setup()?;
        Ok(hosts)
    }

    fn setup(&self) -> Result<(), String> {
        let bridge = self.bridge();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{}.254/24", self.subnet),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..self.count {
            let ns = self.ns(i);
            let outside = format!("{}h{i}", self.tag);
            let inside = format!("{}n{i}", self.tag);
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            run(&["ip", "link", "set", &outside, "master", &bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            run(&["ip", "link", "set", &inside, "netns", &ns])?;
            let exec = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", ns.as_str()];
                full.extend_from_slice(args);
                run(&full)
            };
            exec(&["ip", "link", "set", "lo", "up"])?;
            exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.ip(i)),
                "dev",
                &inside,
            ])?;
            exec(&["ip", "link", "set", &inside, "up"])?;
        }
        Ok(())
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// Namespace of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// Address of host `i`.
    pub fn ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.subnet, i as u8 + 1))
    }

    /// Drops every packet between a host of `a` and a host of `b`.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        let mut routes = self.routes.lock().unwrap();
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let target = format!("{}/32", self.ip(to));
                    run(&[
                        "ip",
                        "netns",
                        "exec",
                        &self.ns(from),
                        "ip",
                        "route",
                        "add",
                        "blackhole",
                        &target,
                    ])?;
                    routes.push((from, self.ip(to)));
                }
            }
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<(), String> {
        let mut routes = self.routes.lock().unwrap();
        for (from, to) in routes.drain(..) {
            let target = format!("{to}/32");
            run(&[
                "ip",
                "netns",
                "exec",
                &self.ns(from),
                "ip",
                "route",
                "del",
                "blackhole",
                &target,
            ])?;
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.count {
            let _ = run(&["ip", "netns", "del", &self.ns(i)]);
            let _ = run(&["ip", "link", "del", &format!("{}h{i}", self.tag)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge()]);
    }
}
