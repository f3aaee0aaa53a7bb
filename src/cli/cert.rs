//! `availdb cert init | issue | revoke | rotate`: a certificate authority and the
//! nodes' TLS certificates (rcgen), for `--tls-cert`/`--tls-key` and
//! clients' `sslrootcert` (`sslmode=verify-full`), and for partner TLS
//! (`--partner-tls-cert`, `--partner-tls-key`, `--partner-ca`,
//! `--partner-crl`: `crate::net`).
//!
//! * `availdb cert init --dir DIR` makes `DIR/ca.pem` (the authority's
//!   certificate, which clients and partners trust), `DIR/ca.key` (its
//!   private key, mode 0600: keep it off the nodes) and `DIR/crl.pem` (its
//!   revocation list, empty). It refuses to replace an existing authority.
//! * `availdb cert issue --dir DIR --name NODE --host H [--host H2 …]
//!   [--out OUT] [--days N] [--backdate-days N]` makes `OUT/NODE.pem` and
//!   `OUT/NODE.key` (0600; OUT defaults to DIR), signed by the authority,
//!   valid for every host name or IP address given — the ones clients
//!   connect to, the node's listener addresses and the address of its
//!   endpoint included. Each certificate serves both sides of a TLS
//!   connection (server and client authentication), so one certificate per
//!   node covers client TLS and partner TLS. Its random serial number is
//!   recorded with the node's name in `DIR/issued.txt`.
//! * `availdb cert revoke --dir DIR --name NODE` revokes every certificate
//!   the authority issued to NODE (recorded in `DIR/revoked.txt`) and
//!   rewrites `DIR/crl.pem`. Nodes given a copy as `--partner-crl` refuse
//!   a revoked certificate at the handshake (`revoked certificate`); a
//!   SIGHUP makes them read it again. Issue the node a new certificate
//!   afterwards if it is to stay.
//!
//! Keys are ECDSA P-256. Every authority availdb makes has a subject of
//! its own, `CN=availdb CA <64 random bits in hex>`, which the certificates
//! and revocation lists it signs name as their issuer (read back from
//! `ca.pem`). Certificates are valid from now for [`VALID_DAYS`] days
//! unless `--days` says otherwise; renew them by issuing again.
//! `--backdate-days` starts the validity in the past (a clock behind; or,
//! with a shorter `--days`, a certificate already expired, to check that
//! partners refuse it).
//!
//! # Rotating the partner CA without downtime
//! `availdb cert rotate --dir OLD --new-dir NEW` does step 1's first half
//! and step 2's file: it makes the new authority in NEW, writes
//! `NEW/trust-old-and-new.pem` (both CA certificates, for step 2) and
//! prints the rest, with an `issue` line for each node OLD issued to.
//! 1. `availdb cert init --dir NEW`, and `availdb cert issue --dir NEW`
//!    for every node.
//! 2. On every node, trust both: `--partner-ca OLD/ca.pem --partner-ca
//!    NEW/ca.pem` (or one file holding both certificates), and send it
//!    SIGHUP (or restart the nodes one at a time).
//! 3. On every node, replace the certificate and key with NEW's, SIGHUP.
//! 4. On every node, drop OLD's CA, SIGHUP.
//!
//! At every step each node presents a certificate that all its partners
//! trust, so every pair of nodes can still connect.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The authority directory's ledger of issued certificates.
const ISSUED: &str = "issued.txt";
/// The authority directory's ledger of revoked certificates.
const REVOKED: &str = "revoked.txt";

/// How long an issued certificate (and the authority) is valid.
pub const VALID_DAYS: i64 = 825;
const CA_NAME: &str = "availdb CA";

/// `availdb cert` options.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// What to make.
    #[command(subcommand)]
    pub command: CertCommand,
}

/// `availdb cert` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a certificate authority: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Directory for the files (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by DIR's authority: OUT/NAME.pem
    /// and OUT/NAME.key.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, visible_alias = "ca-dir", value_name = "DIR")]
        dir: PathBuf,
        /// The node's name (the files' names, and the certificate's CN).
        #[arg(long)]
        name: String,
        /// A host name or IP address clients or partners connect to
        /// (repeat for more).
        #[arg(long = "host", value_name = "HOST", required = true)]
        hosts: Vec<String>,
        /// Directory for the node's files (created if missing) [default:
        /// DIR].
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
        /// Days the certificate is valid [default: 825].
        #[arg(long, value_name = "N", default_value_t = VALID_DAYS)]
        days: i64,
        /// Start the validity this many days before now [default: 0].
        #[arg(long, value_name = "N", default_value_t = 0)]
        backdate_days: i64,
    },
    /// Start rotating to a new authority: NEW/ca.pem and ca.key, and
    /// NEW/trust-old-and-new.pem for the nodes' --partner-ca while both are
    /// trusted; prints the remaining steps.
    Rotate {
        /// Directory holding the authority in use now.
        #[arg(long, visible_alias = "ca-dir", value_name = "OLD")]
        dir: PathBuf,
        /// Directory for the new authority (created; must not hold one).
        #[arg(long, value_name = "NEW")]
        new_dir: PathBuf,
    },
    /// Revoke every certificate DIR's authority issued to NAME: DIR/crl.pem
    /// lists it (give that file to the nodes as --partner-crl, SIGHUP).
    Revoke {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, visible_alias = "ca-dir", value_name = "DIR")]
        dir: PathBuf,
        /// The node whose certificates are revoked.
        #[arg(long)]
        name: String,
    },
}

/// When a certificate is valid: from `backdate_days` before now, for
/// `days` days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Days from the start to the end.
    pub days: i64,
    /// Days before now the validity starts.
    pub backdate_days: i64,
}

impl Default for Validity {
    fn default() -> Validity {
        Validity {
            days: VALID_DAYS,
            backdate_days: 0,
        }
    }
}

/// Runs `availdb cert …`.
pub fn run(args: CertArgs) -> Result<(), String> {
    match args.command {
        CertCommand::Init { dir } => {
            let (cert, key) = init(&dir)?;
            println!(
                "certificate authority: {} (give it to clients as sslrootcert)\nits key: {} (keep it off the nodes)",
                cert.display(),
                key.display()
            );
        }
        CertCommand::Rotate { dir, new_dir } => {
            let (both, names) = rotate(&dir, &new_dir)?;
            let (new, both) = (new_dir.display(), both.display());
            println!("new certificate authority: {new}/ca.pem (its key: {new}/ca.key)");
            println!("1. issue every node a certificate of it:");
            if names.is_empty() {
                println!("   availdb cert issue --dir {new} --name NODE --host HOST …");
            }
            for name in names {
                println!("   availdb cert issue --dir {new} --name {name} --host HOST …");
            }
            println!(
                "2. on every node: --partner-ca {both} (both authorities), then SIGHUP\n\
                 3. on every node: --partner-tls-cert/--partner-tls-key from {new}, then SIGHUP\n\
                 4. on every node: --partner-ca {new}/ca.pem only, then SIGHUP\n\
                 at every step each node presents a certificate all its partners trust"
            );
        }
        CertCommand::Revoke { dir, name } => {
            let (crl, count) = revoke(&dir, &name)?;
            println!(
                "revoked every certificate issued to {name}: {} now lists {count}; copy it to \
                 every node's --partner-crl and send them SIGHUP",
                crl.display()
            );
        }
        CertCommand::Issue {
            dir,
            name,
            hosts,
            out,
            days,
            backdate_days,
        } => {
            let validity = Validity {
                days,
                backdate_days,
            };
            let out = out.as_deref().unwrap_or(&dir);
            let (cert, key) = issue_to(&dir, out, &name, &hosts, validity)?;
            let (cert, key, ca) = (
                cert.display(),
                key.display(),
                dir.join("ca.pem").display().to_string(),
            );
            println!(
                "node certificate: {cert} and key: {key}\n\
                 for clients: availdb server --tls-cert {cert} --tls-key {key}\n\
                 for partners: availdb server --partner-tls-cert {cert} --partner-tls-key {key} \
                 --partner-ca {ca}"
            );
        }
    }
    Ok(())
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: certificates (and revocation lists) name their
    // issuer, and two authorities trusted at once during a rotation must
    // not be taken for one another.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{CA_NAME} {:016x}", new_serial()?),
    );
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, Validity::default());
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    let days = |n: i64| std::time::Duration::from_secs(n.unsigned_abs() * 86_400);
    let now = std::time::SystemTime::now();
    let start = if validity.backdate_days >= 0 {
        now - days(validity.backdate_days)
    } else {
        now + days(validity.backdate_days)
    };
    params.not_before = start.into();
    params.not_after = (start + days(validity.days)).into();
}

/// Makes the authority in `dir`; returns its certificate and key paths.
pub fn init(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        return Err(format!(
            "{} already holds a certificate authority: certificates it issued would stop \
             verifying if it were replaced; use another --dir",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = ca_params()?
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the authority: {e}"))?;
    write_private(&key_path, &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    write_crl(dir, &[])?;
    Ok((cert_path, key_path))
}

/// Starts a rotation from the authority in `old` to a new one made in
/// `new`: returns the file trusting both (`new/trust-old-and-new.pem`)
/// and the names `old` issued certificates to, in the order issued.
pub fn rotate(old: &Path, new: &Path) -> Result<(PathBuf, Vec<String>), String> {
    let old_ca = old.join("ca.pem");
    let old_text = std::fs::read_to_string(&old_ca).map_err(|e| {
        format!(
            "cannot read the authority in use, {}: {e}; --dir names the directory `cert init` made",
            old_ca.display()
        )
    })?;
    if !old_text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("{} holds no PEM certificate", old_ca.display()));
    }
    let (new_ca, _) = init(new)?;
    let new_text = std::fs::read_to_string(&new_ca)
        .map_err(|e| format!("cannot read {}: {e}", new_ca.display()))?;
    let both = new.join("trust-old-and-new.pem");
    write(&both, &format!("{}\n{}", old_text.trim_end(), new_text))?;
    let mut names = Vec::new();
    for (_, name) in ledger(&old.join(ISSUED))? {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok((both, names))
}

/// Issues `name`'s certificate for `hosts` from the authority in `dir`,
/// into `dir`, valid from now for [`VALID_DAYS`].
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
    issue_to(dir, dir, name, hosts, Validity::default())
}

/// Issues `name`'s certificate for `hosts` from the authority in `dir`,
/// into `out`; returns its certificate and key paths.
pub fn issue_to(
    dir: &Path,
    out: &Path,
    name: &str,
    hosts: &[String],
    validity: Validity,
) -> Result<(PathBuf, PathBuf), String> {
    if validity.days < 1 {
        return Err(format!(
            "--days {} is no validity: give at least 1",
            validity.days
        ));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?} is not a usable node name for file names: use letters, digits, '-', '_', '.'"
        ));
    }
    let issuer = authority(dir)?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .map_err(|e| format!("a --host is not a host name or IP address: {e}"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, validity);
    let serial = new_serial()?;
    params.serial_number = Some(serial.into());
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign {name}'s certificate: {e}"))?;
    record(&dir.join(ISSUED), serial, name)?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let (cert_path, key_path) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    write_private(&key_path, &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

/// The authority in `dir`, to sign with.
fn authority(dir: &Path) -> Result<Issuer<'static, KeyPair>, String> {
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        format!(
            "cannot read the authority's key {}: {e}; make one with availdb cert init --dir {}",
            ca_key_path.display(),
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| format!("{} is not a private key: {e}", ca_key_path.display()))?;
    let ca_cert_path = dir.join("ca.pem");
    let ca_cert_pem = std::fs::read_to_string(&ca_cert_path).map_err(|e| {
        format!(
            "cannot read the authority's certificate {}: {e}; make one with availdb cert init \
             --dir {}",
            ca_cert_path.display(),
            dir.display()
        )
    })?;
    // The certificate's own subject, so that what is signed names exactly
    // the authority partners trust (and authorities made when every one was
    // `CN=availdb CA` keep working).
    Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|e| {
        format!(
            "{} is not the authority's certificate: {e}",
            ca_cert_path.display()
        )
    })
}

/// A random positive 63-bit serial number.
fn new_serial() -> Result<u64, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for a serial number".to_string())?;
    Ok((u64::from_be_bytes(bytes) >> 1).max(1))
}

/// Appends `SERIAL NAME` (hexadecimal serial) to a ledger of the
/// authority's directory.
fn record(ledger: &Path, serial: u64, name: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger)
        .and_then(|mut f| writeln!(f, "{serial:016x} {name}"))
        .map_err(|e| format!("cannot write {}: {e}", ledger.display()))
}

/// The `(serial, name)` lines of a ledger (none when it does not exist).
fn ledger(path: &Path) -> Result<Vec<(u64, String)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            line.split_once(' ')
                .and_then(|(serial, name)| {
                    Some((u64::from_str_radix(serial, 16).ok()?, name.to_string()))
                })
                .ok_or_else(|| {
                    format!(
                        "{} has a line that is not SERIAL NAME: {line:?}",
                        path.display()
                    )
                })
        })
        .collect()
}

/// Revokes every certificate `dir`'s authority issued to `name` and
/// rewrites `DIR/crl.pem`; returns it and how many certificates it lists.
pub fn revoke(dir: &Path, name: &str) -> Result<(PathBuf, usize), String> {
    let issued = ledger(&dir.join(ISSUED))?;
    let serials: Vec<u64> = issued
        .iter()
        .filter(|(_, n)| n == name)
        .map(|(s, _)| *s)
        .collect();
    if serials.is_empty() {
        return Err(format!(
            "the authority in {} issued no certificate to {name:?} (its ledger {ISSUED} lists \
             the certificates availdb cert issue made)",
            dir.display()
        ));
    }
    let mut revoked = ledger(&dir.join(REVOKED))?;
    for serial in serials {
        if !revoked.iter().any(|(s, _)| *s == serial) {
            record(&dir.join(REVOKED), serial, name)?;
            revoked.push((serial, name.to_string()));
        }
    }
    let crl = write_crl(dir, &revoked)?;
    Ok((crl, revoked.len()))
}

/// Signs a revocation list of `revoked` into `DIR/crl.pem`.
fn write_crl(dir: &Path, revoked: &[(u64, String)]) -> Result<PathBuf, String> {
    let issuer = authority(dir)?;
    let now = std::time::SystemTime::now();
    let params = rcgen::CertificateRevocationListParams {
        this_update: now.into(),
        next_update: (now + std::time::Duration::from_secs(VALID_DAYS as u64 * 86_400)).into(),
        crl_number: new_serial()?.into(),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|(serial, _)| rcgen::RevokedCertParams {
                serial_number: (*serial).into(),
                revocation_time: now.into(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer)
        .and_then(|crl| crl.pem())
        .map_err(|e| format!("cannot sign the revocation list: {e}"))?;
    let path = dir.join("crl.pem");
    write(&path, &crl)?;
    Ok(path)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_loads_as_the_nodes_tls_and_init_never_replaces_an_authority() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let err = init(dir.path()).unwrap_err();
        assert!(err.contains("already holds"), "{err}");
        let (cert, key) =
            issue(dir.path(), "r1", &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(crate::tls::acceptor(&cert, &key).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is the owner's only");
        }
        let err = issue(dir.path(), "../x", &["h".into()]).unwrap_err();
        assert!(err.contains("node name"), "{err}");
        let other = tempfile::tempdir().unwrap();
        let err = issue(other.path(), "r1", &["h".into()]).unwrap_err();
        assert!(err.contains("availdb cert init"), "{err}");
    }

    #[test]
    fn rotate_makes_a_new_authority_and_a_file_trusting_both_for_every_issued_node() {
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let new_dir = new.path().join("ca2");
        let err = rotate(old.path(), &new_dir).unwrap_err();
        assert!(err.contains("cannot read the authority in use"), "{err}");
        assert!(
            !new_dir.join("ca.pem").exists(),
            "nothing made for a bad OLD"
        );
        init(old.path()).unwrap();
        for name in ["r1", "r2", "r1"] {
            issue(old.path(), name, &["127.0.0.1".into()]).unwrap();
        }
        let (both, names) = rotate(old.path(), &new_dir).unwrap();
        assert_eq!(names, ["r1", "r2"], "each node once, in the order issued");
        let text = std::fs::read_to_string(&both).unwrap();
        let old_ca = std::fs::read_to_string(old.path().join("ca.pem")).unwrap();
        let new_ca = std::fs::read_to_string(new_dir.join("ca.pem")).unwrap();
        assert_ne!(old_ca, new_ca);
        assert!(text.contains(old_ca.trim()) && text.contains(new_ca.trim()));
        assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        // Step 2: a node with either authority's certificate trusts both.
        let (cert, key) = issue(&new_dir, "r1", &["127.0.0.1".into()]).unwrap();
        let files = crate::net::tls::PartnerTlsFiles {
            cert,
            key,
            cas: vec![both],
            crls: vec![],
        };
        assert!(crate::net::PartnerTls::load(&files).is_ok());
        let err = rotate(old.path(), &new_dir).unwrap_err();
        assert!(err.contains("already holds"), "never replaces NEW: {err}");
    }

    #[test]
    fn issue_writes_to_out_for_the_days_asked_and_refuses_no_validity() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let out = dir.path().join("nodes/r2");
        let validity = Validity {
            days: 2,
            backdate_days: 0,
        };
        let (cert, key) =
            issue_to(dir.path(), &out, "r2", &["127.0.0.1".into()], validity).unwrap();
        assert_eq!((cert.parent(), key.parent()), (Some(&*out), Some(&*out)));
        let files = crate::net::PartnerTlsFiles {
            cert,
            key,
            cas: vec![dir.path().join("ca.pem")],
            crls: vec![dir.path().join("crl.pem")],
        };
        assert!(crate::net::PartnerTls::load(&files).is_ok());
        let none = Validity {
            days: 0,
            backdate_days: 0,
        };
        let err = issue_to(dir.path(), &out, "r3", &["h".into()], none).unwrap_err();
        assert!(err.contains("--days"), "{err}");
    }

    #[test]
    fn revoke_lists_every_certificate_of_the_name_once_and_only_issued_names() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        assert!(
            dir.path().join("crl.pem").exists(),
            "init writes an empty list"
        );
        issue(dir.path(), "r1", &["h".into()]).unwrap();
        issue(dir.path(), "r1", &["h".into()]).unwrap();
        issue(dir.path(), "r2", &["h".into()]).unwrap();
        assert_eq!(revoke(dir.path(), "r1").unwrap().1, 2);
        assert_eq!(revoke(dir.path(), "r1").unwrap().1, 2, "never twice");
        assert_eq!(revoke(dir.path(), "r2").unwrap().1, 3);
        let err = revoke(dir.path(), "r9").unwrap_err();
        assert!(err.contains("no certificate to \"r9\""), "{err}");
        let serials: Vec<u64> = ledger(&dir.path().join(ISSUED))
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(serials.len(), 3);
        assert!(serials[0] != serials[1] && serials[1] != serials[2]);
    }

    #[test]
    fn a_corrupt_authority_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        std::fs::write(dir.path().join("ca.key"), "not a key").unwrap();
        let err = issue(dir.path(), "r1", &["h".into()]).unwrap_err();
        assert!(
            err.contains("ca.key") && err.contains("not a private key"),
            "{err}"
        );
    }
}
