"""The matrix: every driver on every kernel, each cell built, verified and (on request)
proven in the lab (run), and what a matrix leaves behind for people and CI: tables, JUnit,
a workflow (report). Imports lab/, build/, verify/, kernels/ and the base."""
