/* qcow2.h: the internal snapshots of a qcow2 image (`savevm`) and the VM
 * state each one holds, read by following the image's tables as the
 * qcow2 specification (QEMU's docs/interop/qcow2.txt) defines them. */
#pragma once

#include <glib.h>
#include <json-c/json.h>

/* Bounds on what an image may make us hold: its snapshot table, one L1
 * table, one L2 table and one cluster (2 MiB at most by the format). */
#define MP_QCOW2_SNAPSHOT_TABLE_MAX (64u << 20)
#define MP_QCOW2_SNAPSHOTS_MAX      65536u /* QEMU's own limit */
#define MP_QCOW2_L1_MAX             (32u << 20) /* bytes, as QEMU */
/* A VM state is read up to its size, which may not exceed twice the
 * image's size plus this (QEMU's are never larger than their image). */
#define MP_QCOW2_STATE_SLACK        (64ull << 20)

typedef struct MpQcow2 MpQcow2;

typedef struct {
    char *id;
    char *name;
    guint64 vm_state_size; /* 0: a disk-only snapshot */
    guint64 disk_size;     /* the virtual disk's size at the snapshot */
    guint64 l1_offset;
    guint32 l1_size;
    guint64 date_sec;
    guint64 vm_clock_ns;
} MpQcow2Snapshot;

/* Opens `path` and reads its header and snapshot table.  @return the
 * image, or NULL with an error naming the field and its offset (an
 * encrypted image, an external data file and unknown incompatible
 * features are refused). */
MpQcow2 *mp_qcow2_open(const char *path, GError **error);
void mp_qcow2_free(MpQcow2 *q); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpQcow2, mp_qcow2_free)

guint mp_qcow2_n_snapshots(const MpQcow2 *q);
const MpQcow2Snapshot *mp_qcow2_snapshot(const MpQcow2 *q, guint i);
/* By name, or by id if no name matches.  NULL if none. */
const MpQcow2Snapshot *mp_qcow2_find(const MpQcow2 *q, const char *name);

/* Selects the snapshot whose VM state mp_qcow2_pread() reads (its L1
 * table is read and checked).  FALSE with an error. */
gboolean mp_qcow2_select(MpQcow2 *q, const MpQcow2Snapshot *s,
                         GError **error);
/* Reads up to `len` bytes of the selected VM state at `offset`.
 * @return bytes read (0 at its end), -1 with an error. */
gssize mp_qcow2_pread(MpQcow2 *q, guint8 *buf, gsize len, guint64 offset,
                      GError **error);
guint64 mp_qcow2_state_size(const MpQcow2 *q);

/* {"version", "cluster_size", "disk_size", "snapshots": [{"id", "name",
 *  "vm_state_size", "disk_size", "date", "vm_clock_ns"}]}. */
json_object *mp_qcow2_to_json(const MpQcow2 *q);
