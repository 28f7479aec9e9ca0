# release-env.sh — sourced by run.sh and the benchmark commands (`. scripts/release-env.sh`).
#
# RocksDB computes a CRC32C over every block and WAL record. librocksdb-sys enables the
# hardware instruction (-msse4.2 -mpclmul) only when rustc itself targets SSE 4.2, which the
# default x86_64 target does not; without it the software CRC was 15% of a Nexmark q0 profile.
# This passes the two flags to the C++ compiler only (cc reads CXXFLAGS_<target>), only on
# x86_64 CPUs that have both instructions, so Rust code and other architectures are unchanged.
# The value must be the same for every release build, or cargo recompiles RocksDB (~25 min).
if [ "$(uname -m)" = x86_64 ] && grep -qw sse4_2 /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then
  export CXXFLAGS_x86_64_unknown_linux_gnu="-msse4.2 -mpclmul"
fi
