/* hex.h: the value of one hexadecimal digit — shared by every decoder of %XX and \uXXXX
 * (the gateway's path check, the JSON codec and reader, the Redis URL). */
#ifndef MERCATO_CORE_HEX_H
#define MERCATO_CORE_HEX_H

/* The value of hex digit c (either case), or -1. */
static inline int hex_digit(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

#endif
