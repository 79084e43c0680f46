/* mp-record.h: the record model shared by every parser, filter and writer.
 *
 * A parser turns the bytes of one channel into a sequence of MpRecord.
 * Every record carries its absolute stream offset and its exact byte span
 * on the wire, so a proxy can forward an untouched record verbatim and a
 * writer can re-serialize a changed one.
 *
 * Lifetime: a parser hands a `const MpRecord *` to its callback; the record
 * and everything it points to (payload, names) belong to the parser and are
 * valid only for the duration of the call.  Copy what you need to keep.
 */
#pragma once

#include <glib.h>

/* Wire constants, spelled as QEMU spells them behind our prefix. */
#define MP_QMIG_FILE_MAGIC   0x5145564du /* "QEVM" */
#define MP_QMIG_FILE_VERSION 0x00000003u

#define MP_QMIG_EOF            0x00
#define MP_QMIG_SECTION_START  0x01
#define MP_QMIG_SECTION_PART   0x02
#define MP_QMIG_SECTION_END    0x03
#define MP_QMIG_SECTION_FULL   0x04
#define MP_QMIG_SUBSECTION     0x05
#define MP_QMIG_VMDESCRIPTION  0x06
#define MP_QMIG_CONFIGURATION  0x07
#define MP_QMIG_COMMAND        0x08
#define MP_QMIG_SECTION_FOOTER 0x7e

typedef enum {
    MP_QMIG_CMD_INVALID = 0,
    MP_QMIG_CMD_OPEN_RETURN_PATH = 1,
    MP_QMIG_CMD_PING = 2,
    MP_QMIG_CMD_POSTCOPY_ADVISE = 3,
    MP_QMIG_CMD_POSTCOPY_LISTEN = 4,
    MP_QMIG_CMD_POSTCOPY_RUN = 5,
    MP_QMIG_CMD_POSTCOPY_RAM_DISCARD = 6,
    MP_QMIG_CMD_PACKAGED = 7,
    MP_QMIG_CMD_ENABLE_COLO = 8,
    MP_QMIG_CMD_POSTCOPY_RESUME = 9,
    MP_QMIG_CMD_RECV_BITMAP = 10,
    MP_QMIG_CMD_SWITCHOVER_START = 11,
    MP_QMIG_CMD__MAX,
} MpQmigCommand;

/* RAM_SAVE_FLAG_* (ram.c / ram.h) */
#define MP_RAM_SAVE_FLAG_FULL          0x001
#define MP_RAM_SAVE_FLAG_ZERO          0x002
#define MP_RAM_SAVE_FLAG_MEM_SIZE      0x004
#define MP_RAM_SAVE_FLAG_PAGE          0x008
#define MP_RAM_SAVE_FLAG_EOS           0x010
#define MP_RAM_SAVE_FLAG_CONTINUE      0x020
#define MP_RAM_SAVE_FLAG_XBZRLE        0x040
#define MP_RAM_SAVE_FLAG_HOOK          0x080
#define MP_RAM_SAVE_FLAG_COMPRESS_PAGE 0x100
#define MP_RAM_SAVE_FLAG_MULTIFD_FLUSH 0x200

#define MP_ENCODING_FLAG_XBZRLE 0x01

/* Block migration (migration/block.c, <= 9.0) */
#define MP_BLK_MIG_FLAG_DEVICE_BLOCK 0x01
#define MP_BLK_MIG_FLAG_EOS          0x02
#define MP_BLK_MIG_FLAG_PROGRESS     0x04
#define MP_BLK_MIG_FLAG_ZERO_BLOCK   0x08
#define MP_BLK_MIG_BLOCK_SIZE        (1u << 20)
#define MP_BLK_SECTOR_BITS           9

/* Return path, enum mig_rp_message_type (migration.c) */
typedef enum {
    MP_RP_MSG_INVALID = 0,
    MP_RP_MSG_SHUT = 1,
    MP_RP_MSG_PONG = 2,
    MP_RP_MSG_REQ_PAGES_ID = 3,
    MP_RP_MSG_REQ_PAGES = 4,
    MP_RP_MSG_RECV_BITMAP = 5,
    MP_RP_MSG_RESUME_ACK = 6,
    MP_RP_MSG_SWITCHOVER_ACK = 7,
    MP_RP_MSG__MAX,
} MpRpMessageType;

#define MP_RP_MAX_LEN                  512
#define MP_RAMBLOCK_RECV_BITMAP_ENDING 0x0123456789abcdefULL

/* Multifd (multifd.h) */
#define MP_MULTIFD_MAGIC              0x11223344u
#define MP_MULTIFD_VERSION            1u
#define MP_MULTIFD_INIT_SIZE          64
#define MP_MULTIFD_PACKET_FIXED_SIZE  320
#define MP_MULTIFD_PACKET_SIZE        (512u * 1024)
#define MP_MULTIFD_FLAG_SYNC          0x01
#define MP_MULTIFD_FLAG_COMPRESS_MASK 0x3e
#define MP_MULTIFD_FLAG_NOCOMP        0x00
#define MP_MULTIFD_FLAG_ZLIB          0x02
#define MP_MULTIFD_FLAG_ZSTD          0x04
#define MP_MULTIFD_FLAG_QPL           0x08
#define MP_MULTIFD_FLAG_UADK          0x10
#define MP_MULTIFD_FLAG_QATZIP        0x20
#define MP_MULTIFD_FLAG_DEVICE_STATE  0x40
#define MP_MULTIFD_DEVICE_STATE_HDR   276

/* x86 target page size; every parser takes the page size as a parameter
 * so other targets only need a different value. */
#define MP_TARGET_PAGE_SIZE 4096u
#define MP_MAX_PAGE_SIZE    65536u

typedef enum {
    /* main channel: structure */
    MP_REC_STREAM_HEADER,  /* be32 magic, be32 version */
    MP_REC_CONFIGURATION,  /* 0x07: machine type and subsections */
    MP_REC_SECTION_HEADER, /* START/PART/END/FULL header */
    MP_REC_SECTION_FOOTER, /* 0x7e be32 section_id */
    MP_REC_COMMAND,        /* 0x08 be16 cmd be16 len payload */
    MP_REC_PACKAGED_END,   /* zero-length marker: the PACKAGED blob ended */
    MP_REC_EOF,            /* 0x00 */
    MP_REC_VMDESC,         /* 0x06 be32 len JSON */
    MP_REC_DEVICE_DATA,    /* body of a FULL section (sliced by vmdesc) */
    MP_REC_OPAQUE,         /* bytes the parser can only pass through */
    /* RAM records (main and postcopy-preempt channels) */
    MP_REC_RAM_MEM_SIZE,      /* MEM_SIZE header with the total */
    MP_REC_RAM_BLOCK,         /* one entry of the block list */
    MP_REC_RAM_PAGE,          /* ZERO, PAGE, XBZRLE or COMPRESS_PAGE */
    MP_REC_RAM_EOS,           /* end of a RAM section body */
    MP_REC_RAM_MULTIFD_FLUSH, /* [8.1+] */
    /* "block" section records (disk pre-copy, 7.2) */
    MP_REC_BLK_BLOCK,    /* a 1 MiB disk chunk (data or zero) */
    MP_REC_BLK_PROGRESS, /* progress percentage */
    MP_REC_BLK_EOS,
    /* return path */
    MP_REC_RP_MESSAGE, /* be16 type be16 len payload */
    MP_REC_RP_BITMAP,  /* the RECV_BITMAP tail (size, bitmap, end mark) */
    /* multifd */
    MP_REC_MFD_INIT,         /* 64-byte MultiFDInit_t */
    MP_REC_MFD_PACKET,       /* a packet header (RAM) */
    MP_REC_MFD_PAGE,         /* one page of a packet (normal or zero) */
    MP_REC_MFD_DATA,         /* compressed page data that is not decoded */
    MP_REC_MFD_DEVICE_STATE, /* [10.0+] device state packet */
    /* any channel: parsing resumed after bytes missing from the input (a
     * capture's gap); no bytes of its own, at the first byte parsed */
    MP_REC_RESYNC,
    MP_REC__MAX,
} MpRecordKind;

typedef enum {
    MP_PAGE_NORMAL,     /* PAGE: payload is the raw page */
    MP_PAGE_ZERO,       /* ZERO: payload is the 1-byte fill value */
    MP_PAGE_XBZRLE,     /* XBZRLE: payload is the encoded delta */
    MP_PAGE_COMPRESSED, /* COMPRESS_PAGE: payload is one zlib stream */
    MP_PAGE__MAX,
} MpPageKind;

typedef struct {
    guint8 type; /* MP_QMIG_SECTION_* */
    guint32 section_id;
    /* from the START/FULL header, or looked up for PART/END */
    const char *idstr;
    guint32 instance_id;
    guint32 version_id;
    gboolean known; /* PART/END: section_id was announced before */
} MpSectionInfo;

typedef struct {
    guint16 cmd;
    guint16 len;
    const guint8 *payload; /* len bytes */
    /* decoded fields by command */
    guint32 ping_value;     /* PING */
    guint32 packaged_len;   /* PACKAGED */
    guint64 advise_summary; /* POSTCOPY_ADVISE with len 16 */
    guint64 advise_target_page_size;
    const char *block; /* RAM_DISCARD, RECV_BITMAP */
    guint32 discard_count;
    const guint8 *discard_ranges; /* discard_count x {be64 start, be64 len} */
} MpCommandInfo;

typedef struct {
    const char *block; /* RAMBlock idstr (current block of the channel) */
    guint64 addr;      /* offset within the block */
    guint32 flags;     /* flags as on the wire (incl. CONTINUE) */
    MpPageKind kind;
    guint32 size;           /* page size */
    const guint8 *payload;  /* see MpPageKind */
    guint32 payload_len;
} MpRamPage;

typedef struct {
    const char *name;
    guint64 used_length;
    guint64 page_size; /* 0 if not on the wire */
    guint64 mr_addr;   /* x-ignore-shared only */
    gboolean has_mr_addr;
    /* mapped-ram [9.0+] (MappedRamHeader): where the block's bitmap and
     * pages sit in the file; the stream goes on at pages_offset +
     * used_length */
    gboolean mapped_ram;
    guint32 mr_version;
    guint64 mr_page_size;
    guint64 bitmap_offset;
    guint64 pages_offset;
} MpRamBlockInfo;

typedef struct {
    const char *device;
    guint64 sector; /* in 512-byte sectors */
    guint32 flags;
    gboolean zero;
    const guint8 *data; /* 1 MiB, or NULL if split across feeds or zero */
    guint64 progress;   /* PROGRESS: percentage */
} MpBlkInfo;

typedef struct {
    guint16 type;
    guint16 len;
    const guint8 *payload;
    guint32 value;     /* SHUT, PONG, RESUME_ACK */
    guint64 start;     /* REQ_PAGES(_ID) */
    guint32 req_len;   /* REQ_PAGES(_ID) */
    const char *block; /* REQ_PAGES_ID, REQ_PAGES (last block), RECV_BITMAP */
    guint64 bitmap_size; /* RP_BITMAP */
} MpRpInfo;

typedef struct {
    guint8 channel_id; /* MFD_INIT */
    const guint8 *uuid;
    guint32 flags;
    guint32 pages_alloc;
    guint32 normal_pages;
    guint32 zero_pages;
    guint32 next_packet_size;
    guint64 packet_num;
    const char *block;
    guint64 addr;      /* MFD_PAGE */
    gboolean zero;     /* MFD_PAGE from the zero_pages list */
    const guint8 *data; /* MFD_PAGE: the page, NULL for zero pages;
                           MFD_DATA: the chunk (record length bytes) */
    guint32 instance_id; /* DEVICE_STATE */
    /* MFD_PACKET: the offset array, be64 x (normal_pages + zero_pages)
     * valid entries (normal pages first) */
    const guint8 *offsets;
    /* MFD_PACKET: MFD_PAGE records follow for its pages (FALSE when they
     * are compressed and not decoded) */
    gboolean pages_follow;
} MpMfdInfo;

typedef struct {
    MpRecordKind kind;
    guint64 offset; /* stream offset of the first byte */
    guint64 length; /* bytes on the wire, header included */
    /* section the record belongs to, or NULL outside any section */
    const MpSectionInfo *section;
    union {
        struct {
            guint32 magic, version;
        } header;
        struct {
            const char *machine;
            gboolean x_ignore_shared;
            gboolean mapped_ram;
        } config;
        MpSectionInfo sect; /* SECTION_HEADER / FOOTER */
        MpCommandInfo cmd;
        struct {
            guint64 total;
        } mem_size;
        MpRamBlockInfo block;
        MpRamPage page;
        MpBlkInfo blk;
        MpRpInfo rp;
        MpMfdInfo mfd;
        struct {
            const char *json;
            guint32 len;
        } vmdesc;
        struct {
            const guint8 *data; /* this chunk */
            guint32 len;
            const char *why; /* opaque: why the parser cannot follow */
        } raw;
        struct {
            guint64 gap_offset; /* the first missing byte */
            guint64 gap_bytes;  /* missing (in every gap since then) */
            guint64 skipped;    /* present after the gap, not parsed */
            const char *what;   /* the record parsing resumed at */
        } resync;
    } u;
} MpRecord;

const char *mp_record_kind_name(MpRecordKind kind);
const char *mp_page_kind_name(MpPageKind kind);
const char *mp_qmig_command_name(guint16 cmd);
const char *mp_rp_message_name(guint16 type);

/* What a callback tells the parser: go on, or stop after this record so
 * the caller can apply back-pressure (the feed returns MP_FEED_PAUSED). */
typedef enum {
    MP_REC_CONTINUE = 0,
    MP_REC_PAUSE = 1,
} MpRecordAction;

typedef MpRecordAction (*MpRecordFunc)(const MpRecord *rec, gpointer user_data);
