/* db_types: text conversions between Lua values and PostgreSQL's text format — parameters
 * out, column values in. Pure C, unit-tested in tests/test_db.c. */
#include "db.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Type OIDs from PostgreSQL's pg_type.dat (stable across versions). */
enum {
    OID_BOOL = 16, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_OID = 26, OID_JSON = 114,
    OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184,
    OID_NUMERIC = 1700, OID_JSONB = 3802,
};

db_type_t db_type_of_oid(Oid oid)
{
    switch (oid) {
    case OID_INT2: case OID_INT4: case OID_OID: return DB_T_INT;
    case OID_INT8: return DB_T_INT8;
    case OID_NUMERIC: return DB_T_NUMERIC;
    case OID_FLOAT4: case OID_FLOAT8: return DB_T_FLOAT;
    case OID_BOOL: return DB_T_BOOL;
    case OID_JSON: case OID_JSONB: return DB_T_JSON;
    case OID_TIMESTAMPTZ: return DB_T_TIMESTAMPTZ;
    case OID_TIMESTAMP: return DB_T_TIMESTAMP;
    default: return DB_T_TEXT;
    }
}

int db_format_number(double d, char *buf, size_t cap)
{
    if (d != d) return snprintf(buf, cap, "NaN");
    if (isinf(d)) return snprintf(buf, cap, d > 0 ? "Infinity" : "-Infinity");
    if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
        return snprintf(buf, cap, "%lld", (long long)d);
    /* The shortest form that reads back as the same double: 0.1 → "0.1", not 0.1000...0001
     * (a numeric column would keep every digit). */
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(buf, cap, "%.*g", prec, d);
        if (strtod(buf, NULL) == d) break;
    }
    return n;
}

int db_parse_exact_integer(const char *s, double *out)
{
    const char *p = s + (*s == '-');
    size_t digits = strspn(p, "0123456789");
    if (digits == 0 || digits > 16 || p[digits]) return 0;
    long long v = strtoll(s, NULL, 10);
    if (v > 9007199254740992LL || v < -9007199254740992LL) return 0;
    *out = (double)v;
    return 1;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static void civil_from_days(long long z, long long *y, unsigned *m, unsigned *d)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long long)yoe + era * 400 + (*m <= 2);
}

/* Read exactly n digits at *p; -1 if they are not there. */
static long digits(const char **p, int n)
{
    long v = 0;
    for (int i = 0; i < n; i++) {
        if ((*p)[i] < '0' || (*p)[i] > '9') return -1;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    return v;
}

int db_timestamptz_rfc3339(const char *in, char *out, size_t cap)
{
    const char *p = in;
    size_t ylen = strspn(p, "0123456789");
    if (ylen < 4 || ylen > 6) return -1;
    long y = digits(&p, (int)ylen);
    if (*p++ != '-') return -1;
    long mo = digits(&p, 2);
    if (*p++ != '-') return -1;
    long d = digits(&p, 2);
    if (*p++ != ' ') return -1;
    long h = digits(&p, 2);
    if (*p++ != ':') return -1;
    long mi = digits(&p, 2);
    if (*p++ != ':') return -1;
    long s = digits(&p, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 24 || mi < 0 || mi > 59 || s < 0 || s > 60) return -1;
    const char *frac = p;
    size_t flen = 0;
    if (*p == '.') {
        flen = 1 + strspn(p + 1, "0123456789");
        if (flen < 2 || flen > 10) return -1;
        p += flen;
    }
    if (*p != '+' && *p != '-') return -1;
    int sign = *p++ == '-' ? -1 : 1;
    long oh = digits(&p, 2), om = 0, os = 0;
    if (*p == ':') { p++; om = digits(&p, 2); }
    if (*p == ':') { p++; os = digits(&p, 2); }
    if (oh < 0 || om < 0 || os < 0 || *p) return -1;   /* also refuses a trailing " BC" */

    long long t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + s;
    t -= sign * (oh * 3600 + om * 60 + os);
    long long days = t >= 0 ? t / 86400 : -((-t + 86399) / 86400), sec = t - days * 86400;
    long long yy;
    unsigned mm, dd;
    civil_from_days(days, &yy, &mm, &dd);
    if (yy < 0 || yy > 999999) return -1;
    int n = snprintf(out, cap, "%04lld-%02u-%02uT%02lld:%02lld:%02lld%.*sZ", yy, mm, dd, sec / 3600, sec / 60 % 60,
                     sec % 60, (int)flen, frac);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}
