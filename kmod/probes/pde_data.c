// SPDX-License-Identifier: GPL-2.0
/*
 * Probe: is the data of a /proc entry read with pde_data()? Before 5.17 it was PDE_DATA(),
 * renamed by "fs: proc: store PDE()->data into inode->i_private" and removed by
 * "proc: remove PDE_DATA() completely".
 */
#include <linux/proc_fs.h>

void *pfq_probe(const struct inode *inode);

void *pfq_probe(const struct inode *inode)
{
	return pde_data(inode);
}
