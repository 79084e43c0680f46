/* test-tunnel-seq.c: sequence numbers, acknowledgements and the frames
 * kept for a resume: a connection that drops after some frames resumes
 * with the peer getting every frame exactly once. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "tunnel-seq.h"

static void
collect(const guint8 *frame, gsize len, gpointer user_data)
{
    GString *s = user_data;
    g_string_append_len(s, (const char *)frame, (gssize)len);
    g_string_append_c(s, ' ');
}

Test(tunnel_seq, keep_until_acked)
{
    g_autoptr(MpTunSeq) s = mp_tun_seq_new(1000);
    g_autoptr(GError) err = NULL;
    char f[8];

    for (int i = 1; i <= 5; i++) {
        guint64 seq = mp_tun_seq_next(s, 1, FALSE);
        cr_assert_eq(seq, (guint64)i);
        g_snprintf(f, sizeof(f), "b%d", i);
        cr_assert(mp_tun_seq_keep(s, 1, FALSE, seq, (guint8 *)f, 2));
    }
    for (int i = 1; i <= 2; i++) {
        guint64 seq = mp_tun_seq_next(s, 1, TRUE);
        g_snprintf(f, sizeof(f), "u%d", i);
        cr_assert(mp_tun_seq_keep(s, 1, TRUE, seq, (guint8 *)f, 2));
    }
    cr_assert_eq(mp_tun_seq_next(s, 3, FALSE), 1);
    cr_assert(mp_tun_seq_keep(s, 3, FALSE, 1, (guint8 *)"c1", 2));
    cr_assert_eq(mp_tun_seq_kept_bytes(s), 16);

    MpTunAckEntry a = {1, 3, 1};
    cr_assert(mp_tun_seq_acked(s, &a, &err));
    cr_assert_eq(mp_tun_seq_kept_bytes(s), 8);
    g_autoptr(GString) order = g_string_new(NULL);
    mp_tun_seq_foreach_kept(s, collect, order);
    cr_assert_str_eq(order->str, "u2 b4 b5 c1 ");

    /* an older ACK changes nothing; one past what was sent is refused */
    MpTunAckEntry old = {1, 2, 0};
    cr_assert(mp_tun_seq_acked(s, &old, NULL));
    cr_assert_eq(mp_tun_seq_kept_bytes(s), 8);
    MpTunAckEntry lie = {1, 9, 0};
    cr_assert_not(mp_tun_seq_acked(s, &lie, &err));
    cr_assert_str_eq(err->message, "tunnel acks: ACK of bulk seq 9 on stream "
                                   "1, but only 5 were sent");
    g_clear_error(&err);
    MpTunAckEntry nobody = {7, 1, 0};
    cr_assert_not(mp_tun_seq_acked(s, &nobody, &err));
    cr_assert(strstr(err->message, "stream 7, which this side never sent"));
}

Test(tunnel_seq, keep_limit_is_back_pressure)
{
    g_autoptr(MpTunSeq) s = mp_tun_seq_new(10);
    guint8 f[6] = {0};
    cr_assert(mp_tun_seq_keep(s, 1, FALSE, mp_tun_seq_next(s, 1, FALSE), f,
                              6));
    guint64 seq = mp_tun_seq_next(s, 1, FALSE);
    cr_assert_not(mp_tun_seq_keep(s, 1, FALSE, seq, f, 6));
    MpTunAckEntry a = {1, 1, 0};
    cr_assert(mp_tun_seq_acked(s, &a, NULL));
    cr_assert(mp_tun_seq_keep(s, 1, FALSE, seq, f, 6));
}

Test(tunnel_seq, receive_new_duplicate_gap)
{
    g_autoptr(MpTunSeq) r = mp_tun_seq_new(0);
    g_autoptr(GError) err = NULL;
    MpTunAckEntry e[4];

    cr_assert_eq(mp_tun_seq_receive(r, 2, FALSE, 1, NULL), MP_TUN_SEQ_NEW);
    cr_assert_eq(mp_tun_seq_receive(r, 2, FALSE, 2, NULL), MP_TUN_SEQ_NEW);
    cr_assert_eq(mp_tun_seq_receive(r, 2, TRUE, 1, NULL), MP_TUN_SEQ_NEW);
    cr_assert_eq(mp_tun_seq_receive(r, 2, FALSE, 1, NULL),
                 MP_TUN_SEQ_DUPLICATE);
    cr_assert_eq(mp_tun_seq_receive(r, 4, FALSE, 2, &err), MP_TUN_SEQ_GAP);
    cr_assert_str_eq(err->message, "tunnel: stream 4, bulk lane: seq 2, "
                                   "expected 1 (frames are missing)");
    cr_assert_eq(mp_tun_seq_ack_entries(r, e, 4), 1);
    cr_assert_eq(e[0].stream, 2);
    cr_assert_eq(e[0].bulk_seq, 2);
    cr_assert_eq(e[0].urgent_seq, 1);
}

/* A sends 10 frames; the connection drops after B got 6 and A got B's
 * ACK of 4; on the new connection A resends what it keeps and B applies
 * each frame exactly once. */
typedef struct {
    MpTunSeq *b;
    GString *applied;
} Peer;

static void
deliver(const guint8 *frame, gsize len, gpointer user_data)
{
    Peer *p = user_data;
    guint64 seq = frame[0];
    MpTunSeqVerdict v = mp_tun_seq_receive(p->b, 1, FALSE, seq, NULL);
    cr_assert_neq(v, MP_TUN_SEQ_GAP);
    if (v == MP_TUN_SEQ_NEW)
        g_string_append_printf(p->applied, "%u ", frame[0]);
}

Test(tunnel_seq, resume_delivers_each_frame_once)
{
    g_autoptr(MpTunSeq) a = mp_tun_seq_new(1 << 20);
    g_autoptr(MpTunSeq) b = mp_tun_seq_new(0);
    g_autoptr(GString) applied = g_string_new(NULL);
    Peer p = {b, applied};
    MpTunAckEntry e[2];

    for (int i = 1; i <= 10; i++) {
        guint8 f[1] = {(guint8)mp_tun_seq_next(a, 1, FALSE)};
        cr_assert(mp_tun_seq_keep(a, 1, FALSE, f[0], f, 1));
        if (i <= 6)
            deliver(f, 1, &p);
        if (i == 4) {
            cr_assert_eq(mp_tun_seq_ack_entries(b, e, 2), 1);
            cr_assert(mp_tun_seq_acked(a, &e[0], NULL));
        }
    }
    /* reconnect: A resends all it keeps (5..10: it got the ACK of 4
     * only), B drops 5 and 6 as duplicates */
    mp_tun_seq_foreach_kept(a, deliver, &p);
    cr_assert_str_eq(applied->str, "1 2 3 4 5 6 7 8 9 10 ");
    cr_assert_eq(mp_tun_seq_ack_entries(b, e, 2), 1);
    cr_assert(mp_tun_seq_acked(a, &e[0], NULL));
    cr_assert_eq(mp_tun_seq_kept_bytes(a), 0);
}
