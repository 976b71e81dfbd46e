//! Prometheus text from verge's `/metrics`, parsed once: look a series up by name and labels,
//! sum the series that carry some labels, or wait until a value holds.

use super::process::Verge;
use super::wait::assert_eventually;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: Vec<Sample>,
    /// The text as scraped, for failure messages.
    pub text: String,
}

impl Metrics {
    /// GET `http://ADMIN/metrics` and parse it.
    pub async fn scrape(admin: SocketAddr) -> Metrics {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        Metrics::parse(&text)
    }

    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_sample)
            .collect();
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    /// The series `name` whose labels are exactly `labels` (`&[]`: the unlabelled one).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The sum over every series `name` that carries all of `labels` (and maybe more).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether some series `name` carries all of `labels`.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    /// Whether any series of any name carries label `key` with `value`.
    pub fn any_with_label(&self, key: &str, value: &str) -> bool {
        self.samples
            .iter()
            .any(|s| s.labels.get(key).map(String::as_str) == Some(value))
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.trim().to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `k="v",k2="v2"` (values may hold escaped quotes and commas).
fn parse_labels(mut rest: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// A value read from one scrape; shows as the value alone in failure messages.
struct Reading<T>(T, Metrics);

impl<T: std::fmt::Debug> std::fmt::Debug for Reading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Scrape `v` until the series `name` with exactly `labels` satisfies `holds`; returns that
/// scrape. After `within`, fails with the last value seen.
pub async fn metric_eventually(
    v: &Verge,
    within: Duration,
    name: &str,
    labels: &[(&str, &str)],
    holds: impl Fn(Option<f64>) -> bool,
) -> Metrics {
    let what = format!("{name}{labels:?}");
    scrape_until(v, within, &what, |m| m.value(name, labels), holds).await
}

/// Like [`metric_eventually`], for the sum over the series `name` that carry `labels`.
pub async fn sum_eventually(
    v: &Verge,
    within: Duration,
    name: &str,
    labels: &[(&str, &str)],
    holds: impl Fn(f64) -> bool,
) -> Metrics {
    let what = format!("sum of {name}{labels:?}");
    scrape_until(v, within, &what, |m| m.sum(name, labels), holds).await
}

/// Scrape `v` until `read` of a scrape satisfies `holds`; returns that scrape.
async fn scrape_until<T: std::fmt::Debug + Copy>(
    v: &Verge,
    within: Duration,
    what: &str,
    read: impl Fn(&Metrics) -> T,
    holds: impl Fn(T) -> bool,
) -> Metrics {
    let probe = || async {
        let m = v.metrics().await;
        Reading(read(&m), m)
    };
    let reading = assert_eventually(within, what, probe, |r| holds(r.0)).await;
    reading.1
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn series_are_found_by_name_and_labels() {
        let m = Metrics::parse(
            "# HELP verge_x a counter\n\
             # TYPE verge_x counter\n\
             verge_x{kind=\"a\",pool=\"p\"} 2\n\
             verge_x{kind=\"b\",pool=\"p\"} 3.5\n\
             verge_x_total 9\n\
             verge_y{path=\"a \\\"quoted\\\", value\"} 1\n\
             verge_z 7\n",
        );
        assert_eq!(
            m.value("verge_x", &[("kind", "a"), ("pool", "p")]),
            Some(2.0)
        );
        assert_eq!(
            m.value("verge_x", &[("pool", "p")]),
            None,
            "labels must match exactly"
        );
        assert_eq!(m.sum("verge_x", &[("pool", "p")]), 5.5);
        assert_eq!(
            m.sum("verge_x", &[]),
            5.5,
            "verge_x_total is another series"
        );
        assert_eq!(
            m.value("verge_y", &[("path", "a \"quoted\", value")]),
            Some(1.0)
        );
        assert_eq!(m.value("verge_z", &[]), Some(7.0));
        assert!(m.has("verge_x", &[("kind", "b")]));
        assert!(!m.has("verge_x", &[("kind", "c")]));
        assert!(m.any_with_label("kind", "b"));
    }
}
