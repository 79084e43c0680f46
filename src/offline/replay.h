/* replay.h: `migproxy replay`, a captured migration played into a
 * destination QEMU started with -incoming, standing in for its source
 * (docs/replay.md).
 *
 * Input (told by content): a stream file (one main channel, no times),
 * a relay capture directory (every channel, with the time each chunk was
 * read) or a packet capture (pcap, pcapng: the first migration session,
 * with the packets' times).  Every channel is opened in its recorded
 * order and gets the bytes the source sent on it; the destination's
 * return path is read (and parsed) all along, and whether the
 * destination accepted the stream is told from it and from the sockets.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

typedef struct {
    const char *to; /* HOST:PORT of the destination's -incoming */
    guint64 rate;   /* at most this many bytes per second; 0: no limit */
    /* follow the recorded times, X times faster (2: twice as fast);
     * 0: as fast as the rate and the destination allow; < 0: the
     * default (1 for an input with times, 0 for a stream file) */
    double speed;
    guint session;     /* a capture directory's session (0: the first) */
    guint wait_s;      /* after the last byte, how long the destination may
                          take to answer (SHUT, or closing) */
    gboolean progress; /* the progress line on stderr */
} MpReplayOptions;

typedef enum {
    MP_REPLAY_ACCEPTED, /* the destination loaded the stream */
    MP_REPLAY_INVALID,  /* the input broke off (a gap, a bad file) */
    MP_REPLAY_NO_INPUT, /* the input cannot be opened or read */
    MP_REPLAY_FORMAT,   /* not a format replay reads */
    MP_REPLAY_REFUSED,  /* the destination refused it, closed early, said
                           error, cannot be reached, or did not answer */
} MpReplayStatus;

/* Replays `path` to opt->to.  @return the report (caller owns): the
 * analysis and metrics of what was sent, timed as it was sent (as the
 * relay's report: rounds, downtime_ms, postcopy, channels[]), plus
 * "replay" {input, format, to, paced, speed, rate, bytes, duration_ms,
 * accepted, confirmed, verdict, return_path{...}}; *status says how it
 * went. */
json_object *mp_replay_run(const char *path, const MpReplayOptions *opt,
                           MpReplayStatus *status);
