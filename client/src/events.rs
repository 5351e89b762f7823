//! The event stream (Server-Sent Events) as an iterator.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::{Client, Error, Event, EventFilter};

/// The events of `GET /events`, in order. After a dropped connection it reconnects
/// (a few times, a second apart) with `Last-Event-ID`, so nothing is missed nor
/// repeated; a `reset` event means the server lost the place (list again).
pub struct EventStream {
    client: Client,
    filter: EventFilter,
    reader: Option<BufReader<ureq::BodyReader<'static>>>,
    last_id: Option<u64>,
    reconnects: u32,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("last_id", &self.last_id)
            .finish()
    }
}

impl EventStream {
    pub(crate) fn open(
        client: Client,
        filter: EventFilter,
        last_id: Option<u64>,
    ) -> Result<EventStream, Error> {
        let resp = client.open_events(&filter, last_id)?;
        Ok(EventStream {
            client,
            filter,
            reader: Some(BufReader::new(resp.into_body().into_reader())),
            last_id,
            reconnects: 3,
        })
    }

    /// The id of the last event read (what a resume starts after).
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_id
    }

    /// How many times in a row a dropped connection is reopened (3 by default; 0:
    /// the stream ends with the connection).
    pub fn set_reconnects(&mut self, n: u32) {
        self.reconnects = n;
    }

    /// One SSE message (`data` lines joined), None at the end of the connection.
    fn message(
        reader: &mut BufReader<ureq::BodyReader<'static>>,
    ) -> Option<std::io::Result<(Option<u64>, String)>> {
        let mut data = String::new();
        let mut id = None;
        let mut any = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any && !data.is_empty() {
                    return Some(Ok((id, data)));
                }
                data.clear();
                any = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            any = true;
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                "id" => id = value.parse().ok(),
                _ => {}
            }
        }
    }
}

impl Iterator for EventStream {
    type Item = Result<Event, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut tries = 0;
        loop {
            if let Some(reader) = self.reader.as_mut() {
                match Self::message(reader) {
                    Some(Ok((id, data))) => {
                        let raw: serde_json::Value = match serde_json::from_str(&data) {
                            Ok(v) => v,
                            Err(e) => {
                                return Some(Err(Error::Protocol {
                                    status: 200,
                                    message: format!("an event that is not JSON: {e}"),
                                }))
                            }
                        };
                        let mut ev: Event = match serde_json::from_value(raw.clone()) {
                            Ok(ev) => ev,
                            Err(e) => {
                                return Some(Err(Error::Protocol {
                                    status: 200,
                                    message: format!(
                                        "an event this client does not understand: {e}"
                                    ),
                                }))
                            }
                        };
                        ev.raw = raw;
                        self.last_id = id.or(Some(ev.id));
                        return Some(Ok(ev));
                    }
                    // The server ended the stream, or the connection dropped.
                    Some(Err(_)) | None => self.reader = None,
                }
            }
            if tries >= self.reconnects {
                return None;
            }
            if tries > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            tries += 1;
            match self.client.open_events(&self.filter, self.last_id) {
                Ok(resp) => self.reader = Some(BufReader::new(resp.into_body().into_reader())),
                Err(e) if tries >= self.reconnects => return Some(Err(e)),
                Err(_) => {}
            }
        }
    }
}
