/* SPDX-License-Identifier: GPL-2.0 */
/* pfq_file.c: /dev/pfq, whose every open file is an endpoint. */
#ifndef _PFQ_FILE_H
#define _PFQ_FILE_H

int pfq_file_init(void);
void pfq_file_exit(void);

#endif /* _PFQ_FILE_H */
