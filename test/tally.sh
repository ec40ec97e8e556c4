# test/tally.sh: the tally of a suite run, for test/run.sh and
# test/matrix.sh.  Source it: pass, fail and skip print one line for a
# test and count it; print_summary lists the failures and prints the
# closing line, "N passed, N failed[, N skipped]".
passed=0
failed=0
skipped=0
failures=()
pass() { passed=$((passed + 1)); printf 'ok      %s\n' "$1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); printf 'FAILED  %s\n' "$1"; }
skip() { skipped=$((skipped + 1)); printf 'skipped %s\n' "$1"; }
print_summary() {
	if [ ${#failures[@]} -gt 0 ]; then
		printf '\nfailed:\n'
		printf '  %s\n' "${failures[@]}"
	fi
	echo
	if [ "$skipped" -gt 0 ]; then
		echo "$passed passed, $failed failed, $skipped skipped"
	else
		echo "$passed passed, $failed failed"
	fi
}
