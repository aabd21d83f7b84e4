//! Cluster membership as etcd names it: member ids, cluster id, and the
//! static bootstrap configuration (`--initial-cluster`).
//!
//! Ids are derived exactly as etcd derives them, so a member keeps its
//! `member_id` across restarts and a cluster bootstrapped with the same flags
//! has the same `cluster_id`:
//!
//! ```text
//! member_id  = be_u64(sha1(sorted(peer_urls).join("") ++ token)[..8])
//! cluster_id = be_u64(sha1(be_u64(id) for id in sorted(member_ids))[..8])
//! ```
//!
//! With etcd's defaults (`default=http://localhost:2380`, token
//! `etcd-cluster`) this gives member 8e9e05c52164694d in cluster
//! cdf818194e3a8c32, the ids etcd prints.

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};

use crate::config::{split_urls, Config};
use crate::raft::types::{Member, MemberId};

/// etcd's `computeMemberID` for a member of a new cluster.
pub fn member_id(peer_urls: &[String], token: &str) -> MemberId {
    let mut urls: Vec<&str> = peer_urls.iter().map(|u| u.as_str()).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd's `genID`: a hash of the sorted member ids.
pub fn cluster_id<'a>(members: impl IntoIterator<Item = &'a MemberId>) -> u64 {
    let mut ids: Vec<MemberId> = members.into_iter().copied().collect();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}

/// The bootstrap view of the cluster, computed from the flags.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub cluster_id: u64,
    pub member_id: MemberId,
    /// Every initial member, by id.
    pub members: BTreeMap<MemberId, Member>,
}

impl Bootstrap {
    /// Parses `--initial-cluster` and finds this member in it, as etcd does.
    pub fn from_config(c: &Config) -> Result<Bootstrap, String> {
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for part in c
            .initial_cluster
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let (name, url) = part.split_once('=').ok_or_else(|| {
                format!("--initial-cluster: {part:?} is not of the form name=peerURL")
            })?;
            split_urls(url)?;
            by_name
                .entry(name.trim().to_string())
                .or_default()
                .push(url.trim().trim_end_matches('/').to_string());
        }
        let own_urls = by_name.get(&c.name).ok_or_else(|| {
            format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                c.name
            )
        })?;
        let mut advertised: Vec<String> = c
            .initial_advertise_peer_urls
            .split(',')
            .filter(|u| !u.trim().is_empty())
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .collect();
        advertised.sort();
        let mut own_sorted = own_urls.clone();
        own_sorted.sort();
        if advertised != own_sorted {
            return Err(format!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                c.name,
                own_urls.join(","),
                c.initial_advertise_peer_urls
            ));
        }
        let client_urls: Vec<String> = c
            .advertise_client_urls
            .split(',')
            .filter(|u| !u.trim().is_empty())
            .map(|u| u.trim().to_string())
            .collect();
        let mut members = BTreeMap::new();
        let mut member_id_self = 0;
        for (name, urls) in by_name {
            let id = member_id(&urls, &c.initial_cluster_token);
            if members.contains_key(&id) {
                return Err(format!("--initial-cluster has duplicate member id {id:x}"));
            }
            let is_self = name == c.name;
            if is_self {
                member_id_self = id;
            }
            members.insert(
                id,
                Member {
                    name,
                    peer_urls: urls,
                    client_urls: if is_self {
                        client_urls.clone()
                    } else {
                        Vec::new()
                    },
                },
            );
        }
        Ok(Bootstrap {
            cluster_id: cluster_id(members.keys()),
            member_id: member_id_self,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn default_ids_match_etcd() {
        let c = Config::try_parse_from(["oxcd"]).unwrap();
        let b = Bootstrap::from_config(&c).unwrap();
        assert_eq!(format!("{:x}", b.member_id), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", b.cluster_id), "cdf818194e3a8c32");
    }

    #[test]
    fn token_changes_ids() {
        let a = member_id(&["http://10.0.0.1:2380".into()], "t1");
        let b = member_id(&["http://10.0.0.1:2380".into()], "t2");
        assert_ne!(a, b);
    }

    #[test]
    fn own_name_must_be_in_initial_cluster() {
        let c = Config::try_parse_from(["oxcd", "--name", "x"]).unwrap();
        assert!(Bootstrap::from_config(&c)
            .unwrap_err()
            .contains("couldn't find local name"));
    }

    #[test]
    fn advertised_peer_urls_must_match() {
        let c = Config::try_parse_from([
            "oxcd",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:9999",
        ])
        .unwrap();
        assert!(Bootstrap::from_config(&c).is_err());
    }
}
