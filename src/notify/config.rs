//! The `channels:` and `escalation:` sections of the daemon config.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::notify::{NoticeKind, Severity};

/// How a channel's messages are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// JSON signed per the Standard Webhooks specification.
    Generic,
    /// A Slack incoming webhook: `text` + `blocks`.
    Slack,
    /// A Discord webhook: `content` + `embeds`.
    Discord,
    /// A Microsoft Teams Workflows webhook: an Adaptive Card.
    Teams,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Generic => "generic",
            ChannelKind::Slack => "slack",
            ChannelKind::Discord => "discord",
            ChannelKind::Teams => "teams",
        }
    }
}

/// One configured channel. `url` and `secrets` are secret: never logged, never
/// returned by the API (the Debug impl leaves them out).
#[derive(Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub url: String,
    /// `whsec_...` signing secrets, current first; during a rotation every one of
    /// them signs (several `v1,` signatures). Only for `generic`.
    pub secrets: Vec<Vec<u8>>,
    /// Notice kinds this channel takes; `None` = all of them.
    pub events: Option<BTreeSet<NoticeKind>>,
    /// Notices below this severity are not sent.
    pub min_severity: Severity,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Soak progress cadence: a `soak_progress` notice each time this much more of
    /// the soak has passed. `None`: no progress notices.
    pub progress_every: Option<Duration>,
    /// Deliveries to this channel in flight at once (across runs; one run's
    /// notices still go one at a time, in order).
    pub concurrency: u32,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("events", &self.events)
            .field("min_severity", &self.min_severity)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Whether a notice of this kind and severity goes to this channel.
    /// Escalation pages always do: a channel named in an escalation level has
    /// asked to be paged (and hears the acknowledgement that ends the paging,
    /// see `escalation::acknowledge`).
    pub fn wants(&self, kind: NoticeKind, severity: Severity) -> bool {
        if kind == NoticeKind::Escalation {
            return true;
        }
        severity >= self.min_severity && self.events.as_ref().is_none_or(|e| e.contains(&kind))
    }

    /// A fingerprint of where this channel sends (sha256 of the URL, hex): a
    /// channel disabled by a 410 stays disabled until its URL changes.
    pub fn url_fingerprint(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.url.as_bytes()))
    }
}

/// An escalation policy: levels paged in turn until someone acknowledges.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub levels: Vec<Level>,
    /// Passes through all levels after the first one (0: page each level once).
    pub repeat: u32,
    /// Also escalate on a breach (always on `needs_human` and `rollback_failed`).
    pub on_breach: bool,
}

#[derive(Debug, Clone)]
pub struct Level {
    pub channels: Vec<String>,
    /// How long to wait for an ack after paging this level before the next one.
    pub delay: Duration,
}

/// Delivery settings shared by every channel (`notifications:` in the config).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Give up on a notification this long after it was created.
    pub max_age: Duration,
    /// First retry delay; doubles per attempt, with jitter, up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often delivery workers look for due notifications when nothing woke them.
    pub poll_interval: Duration,
    /// A base URL for the runbook; notices link `{runbook_url}#{section}`.
    pub runbook_url: Option<String>,
    /// The daemon's top-level `public_url` (set by the config's loader):
    /// notices link `{public_url}/runs/{id}/runbook` instead.
    pub public_url: Option<String>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_age: Duration::from_secs(24 * 3600),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
            runbook_url: None,
            public_url: None,
        }
    }
}

/// Everything about notifications that the config defines.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    pub channels: BTreeMap<String, Channel>,
    pub policies: BTreeMap<String, Policy>,
    pub delivery: DeliverySettings,
}

// --- reading the config file ---

/// `channels.NAME` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChannel {
    kind: ChannelKind,
    url: String,
    /// One `whsec_...` secret, or a list during a rotation (newest first).
    secret: Option<OneOrMany>,
    events: Option<Vec<String>>,
    min_severity: Option<Severity>,
    timeout: Option<String>,
    progress_every: Option<String>,
    concurrency: Option<u32>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `escalation.NAME` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    levels: Vec<RawLevel>,
    repeat: Option<u32>,
    on_breach: Option<bool>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLevel {
    channels: Vec<String>,
    delay: Option<String>,
}

/// `notifications:` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelivery {
    max_age: Option<String>,
    min_backoff: Option<String>,
    max_backoff: Option<String>,
    poll_interval: Option<String>,
    runbook_url: Option<String>,
}

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default delay before the next escalation level.
pub const DEFAULT_LEVEL_DELAY: Duration = Duration::from_secs(15 * 60);

/// Check and resolve the notification sections; problems go to `errors`, each
/// naming its key. Messages never contain a URL or a secret.
pub(crate) fn resolve(
    channels: &BTreeMap<String, RawChannel>,
    policies: &BTreeMap<String, RawPolicy>,
    delivery: Option<&RawDelivery>,
    errors: &mut Vec<String>,
) -> NotifyConfig {
    let mut out = NotifyConfig::default();
    let duration =
        |key: String, v: &Option<String>, errors: &mut Vec<String>| -> Option<Duration> {
            let v = v.as_ref()?;
            match crate::plan::duration::parse(v) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    errors.push(format!("{key} must be > 0"));
                    None
                }
                Err(e) => {
                    errors.push(format!("{key}: {e}"));
                    None
                }
            }
        };
    for (name, c) in channels {
        let key = format!("channels.{name}");
        let url = match crate::config::expand_env(&c.url) {
            Ok(u) => u,
            Err(e) => {
                errors.push(format!("{key}.url: {e}"));
                continue;
            }
        };
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => errors.push(format!("{key}.url must be an http:// or https:// URL")),
            Err(e) => errors.push(format!("{key}.url is not a valid URL ({e})")),
        }
        let mut secrets = Vec::new();
        let written: Vec<&String> = match &c.secret {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v.iter().collect(),
        };
        if !written.is_empty() && c.kind != ChannelKind::Generic {
            errors.push(format!(
                "{key}.secret: only `generic` channels are signed ({} webhooks carry their secret in the url)",
                c.kind.as_str()
            ));
        }
        for (i, s) in written.iter().enumerate() {
            let at = format!("{key}.secret[{i}]");
            match crate::config::expand_env(s) {
                Ok(s) => match crate::notify::sign::parse_secret(&s) {
                    Ok(b) => secrets.push(b),
                    Err(e) => errors.push(format!("{at}: {e}")),
                },
                Err(e) => errors.push(format!("{at}: {e}")),
            }
        }
        let events = c.events.as_ref().map(|names| {
            names
                .iter()
                .filter_map(|n| {
                    let k = NoticeKind::parse(n);
                    if k.is_none() {
                        errors.push(format!(
                            "{key}.events: unknown event {n:?} (one of {})",
                            NoticeKind::ALL
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    k
                })
                .collect::<BTreeSet<_>>()
        });
        let timeout =
            duration(format!("{key}.timeout"), &c.timeout, errors).unwrap_or(DEFAULT_TIMEOUT);
        let progress_every = duration(format!("{key}.progress_every"), &c.progress_every, errors);
        out.channels.insert(
            name.clone(),
            Channel {
                name: name.clone(),
                kind: c.kind,
                url,
                secrets,
                events,
                min_severity: c.min_severity.unwrap_or(Severity::Info),
                timeout,
                progress_every,
                concurrency: match c.concurrency.unwrap_or(8) {
                    n @ 1..=64 => n,
                    _ => {
                        errors.push(format!("{key}.concurrency must be between 1 and 64"));
                        8
                    }
                },
            },
        );
    }
    for (name, p) in policies {
        let key = format!("escalation.{name}");
        if p.levels.is_empty() {
            errors.push(format!("{key}.levels must list at least one level"));
        }
        let mut levels = Vec::new();
        for (i, l) in p.levels.iter().enumerate() {
            if l.channels.is_empty() {
                errors.push(format!(
                    "{key}.levels[{i}].channels must name at least one channel"
                ));
            }
            for c in &l.channels {
                if !channels.contains_key(c) {
                    errors.push(format!(
                        "{key}.levels[{i}].channels: no channel {c:?} in `channels`"
                    ));
                }
            }
            levels.push(Level {
                channels: l.channels.clone(),
                delay: duration(format!("{key}.levels[{i}].delay"), &l.delay, errors)
                    .unwrap_or(DEFAULT_LEVEL_DELAY),
            });
        }
        out.policies.insert(
            name.clone(),
            Policy {
                name: name.clone(),
                levels,
                repeat: match p.repeat.unwrap_or(0) {
                    n @ 0..=100 => n,
                    _ => {
                        errors.push(format!("{key}.repeat must be at most 100"));
                        0
                    }
                },
                on_breach: p.on_breach.unwrap_or(false),
            },
        );
    }
    if let Some(d) = delivery {
        let s = &mut out.delivery;
        if let Some(v) = duration("notifications.max_age".into(), &d.max_age, errors) {
            s.max_age = v;
        }
        if let Some(v) = duration("notifications.min_backoff".into(), &d.min_backoff, errors) {
            s.min_backoff = v;
        }
        if let Some(v) = duration("notifications.max_backoff".into(), &d.max_backoff, errors) {
            s.max_backoff = v;
        }
        if let Some(v) = duration(
            "notifications.poll_interval".into(),
            &d.poll_interval,
            errors,
        ) {
            s.poll_interval = v;
        }
        if s.min_backoff > s.max_backoff {
            errors
                .push("notifications.min_backoff must not exceed notifications.max_backoff".into());
        }
        s.runbook_url = d.runbook_url.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (NotifyConfig, Vec<String>) {
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(default)]
            channels: BTreeMap<String, RawChannel>,
            #[serde(default)]
            escalation: BTreeMap<String, RawPolicy>,
            notifications: Option<RawDelivery>,
        }
        let doc: Doc = serde_saphyr::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let c = resolve(
            &doc.channels,
            &doc.escalation,
            doc.notifications.as_ref(),
            &mut errors,
        );
        (c, errors)
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn channels_and_policies_resolve_with_their_defaults() {
        let (c, errors) = parse(&format!(
            "channels:\n\
             \x20 hooks: {{kind: generic, url: 'https://hooks.example/x', secret: [{SECRET}, {SECRET}]}}\n\
             \x20 chat: {{kind: slack, url: 'https://hooks.slack.com/services/T/B/XYZ', events: [breach, needs_human], min_severity: warning, progress_every: 10m}}\n\
             escalation:\n\
             \x20 oncall: {{levels: [{{channels: [chat]}}, {{channels: [hooks, chat], delay: 5m}}], repeat: 2}}\n\
             notifications: {{min_backoff: 2s, runbook_url: 'https://wiki/runbook'}}\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let hooks = &c.channels["hooks"];
        assert_eq!(hooks.secrets.len(), 2);
        assert_eq!(hooks.timeout, DEFAULT_TIMEOUT);
        assert!(hooks.wants(NoticeKind::SoakProgress, Severity::Info));
        let chat = &c.channels["chat"];
        assert!(chat.wants(NoticeKind::Breach, Severity::Critical));
        assert!(!chat.wants(NoticeKind::Succeeded, Severity::Info));
        assert!(!chat.wants(NoticeKind::NeedsHuman, Severity::Info));
        assert!(chat.wants(NoticeKind::Escalation, Severity::Info));
        assert_eq!(chat.progress_every, Some(Duration::from_secs(600)));
        let p = &c.policies["oncall"];
        assert_eq!(p.levels[0].delay, DEFAULT_LEVEL_DELAY);
        assert_eq!(p.levels[1].delay, Duration::from_secs(300));
        assert_eq!(p.repeat, 2);
        assert_eq!(c.delivery.min_backoff, Duration::from_secs(2));
        // Debug output never shows where a channel sends.
        assert!(!format!("{chat:?}").contains("XYZ"));
    }

    #[test]
    fn mistakes_are_named_without_echoing_urls_or_secrets() {
        let (_, errors) = parse(
            "channels:\n\
             \x20 a: {kind: slack, url: 'ftp://hooks.slack.com/SECRETPATH', secret: whsec_AAAA}\n\
             \x20 b: {kind: generic, url: 'https://x.example/h', secret: 'nope-SECRETVALUE', events: [breech]}\n\
             escalation:\n\
             \x20 p: {levels: [{channels: [missing]}]}\n\
             \x20 q: {levels: []}\n",
        );
        let all = errors.join("\n");
        for expected in [
            "channels.a.url must be an http:// or https:// URL",
            "channels.a.secret: only `generic` channels are signed",
            "channels.b.secret[0]",
            "channels.b.events: unknown event \"breech\"",
            "escalation.p.levels[0].channels: no channel \"missing\"",
            "escalation.q.levels must list at least one level",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert!(
            !all.contains("SECRETPATH") && !all.contains("SECRETVALUE"),
            "{all}"
        );
    }
}
