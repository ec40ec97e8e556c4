#!/usr/bin/env bash
#
# The version lives in entitlock.control.  Check that everything that
# repeats it agrees: the install script's name, META.json, and the version
# the server reports after CREATE EXTENSION.

set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$ENTITLOCK_ROOT" || exit 1

version=$(control_value default_version)
[ -n "$version" ] || { log "no default_version in entitlock.control"; exit 1; }
status=0

[ -f "sql/entitlock--$version.sql" ] ||
	{ log "sql/entitlock--$version.sql is missing"; status=1; }

# META.json must parse, and its version fields must match.
meta=$(perl -MJSON::PP -e '
	local $/; my $m = decode_json(<STDIN>);
	print join(" ", $m->{version}, $m->{provides}{entitlock}{version},
			   $m->{"meta-spec"}{version}), "\n";' <META.json) ||
	{ log "META.json does not parse"; exit 1; }
read -r dist_version provides_version spec_version <<<"$meta"
# PGXN wants semantic versions: control file 1.0 is 1.0.0 there.
semver=$version
[[ $semver =~ ^[0-9]+\.[0-9]+$ ]] && semver=$semver.0
[ "$dist_version" = "$semver" ] ||
	{ log "META.json version $dist_version, control file $version (PGXN: $semver)"; status=1; }
[ "$provides_version" = "$semver" ] ||
	{ log "META.json provides.entitlock.version $provides_version, control file $version (PGXN: $semver)"; status=1; }
[ "$spec_version" = "1.0.0" ] ||
	{ log "META.json meta-spec version $spec_version, expected 1.0.0"; status=1; }

db=entitlock_version_check
test_db_create "$db" || exit 1
installed=$(psql -X -At -d "$db" \
	-c "SELECT extversion FROM pg_extension WHERE extname = 'entitlock'")
test_db_drop "$db"
[ "$installed" = "$version" ] ||
	{ log "server installed version $installed, control file $version"; status=1; }

log "version $version: control file, install script, META.json and server agree"
exit $status
