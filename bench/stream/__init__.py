"""``emolive bench stream``: live sessions in real time (``bench soak`` runs one for minutes).

A benchmark, never a test: absolute timings depend on the machine and on what else runs.

Load: every session is fed TTS speech (flite ``slt``; the bundled demo clip when flite is
missing) at 48 kHz, pushed in real time in 20 ms chunks, a pause between turns and
``end_of_turn`` after each.

Latency, measured per pushed chunk: wall time from the chunk's arrival (``push_audio``) to
the moment the first frame whose voice contains the chunk's first sample leaves the server.
Finding that frame is exact, not a model of the engine: a session outputs pushed 48 kHz
voice bit for bit (the 48 kHz stream is not resampled), with exact-zero samples where it
inserts silence (idle, underrun, padding), and the bench never pushes a zero sample (0 is
sent as 1, -90 dBFS). Walking the frames' audio and matching its non-zero samples against
the pushed ones gives, for every pushed sample, the frame that carries it; a mismatch is
counted and reported (it would mean audio was lost or reordered).

- ``--transport engine``: ``emolive.engine.session.Session`` objects in this process sharing one
  worker pool (as the server shares ``Settings.workers`` threads); "leaves" = yielded by
  ``Session.frames()``.
- ``--transport webrtc``: the real server (``BackgroundServer``, loopback ICE) in this
  process and N aiortc client peers + WebSockets in a child process (so the server's CPU is
  measurable apart). Arrival = the server calling ``push_audio`` (the registry builds the
  sessions' engines as ``emolive.bench.stream.webrtc_run.RecordingSession``); the frame that carries
  a chunk is found by a recording sink added to the session (``LiveSession.add_sink``) that
  sees every frame the server's pump fans out, and the moment the video track sends it by the
  session's ``sent_observers``. The client maps each received video frame to its frame index by pts (= index x 3600 on the 90 kHz clock) and timestamps it when
  ``track.recv()`` returns it. Both processes use CLOCK_MONOTONIC. Reported: "engine"
  latency (arrival -> the server's pump hands the frame to the WebRTC track), "sent"
  latency (arrival -> the track hands that frame, VP8-encoded, to aiortc's RTP sender, which
  packetizes and sends it at once: the frame leaves the server) and "client" latency
  (arrival -> the frame reaches the client: + RTP over loopback, aiortc's jitter buffer);
  "sent" and "client" take the first frame with that index or a later one.

  In a deployment the clients run elsewhere; here they share the server's two cores, at the
  same priority, so they take CPU the server would have. To keep that small the client
  decodes one video stream only: on the others, aiortc receives, decrypts, depacketizes and
  reassembles every frame as usual, and a stand-in for its VP8 decoder checks the frame
  header and counts the frame instead of decoding it (~0.85 ms per 512² frame). The decoded
  stream is the check that the pictures are right: every 25th decoded frame is compared with
  the server's render of the same index (PSNR). The server does exactly the work it does for
  a browser.

CPU per session: this process's CPU time (user + system) over the measurement window /
window / N, in % of one core. With webrtc the client process is reported separately.
"""
