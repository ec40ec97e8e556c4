#!/usr/bin/perl
# test/trusted/context-filter.pl: removes from psql output the CONTEXT
# frames that point into entitlock's own functions, and nothing else.
#
# The C edition's functions leave no frame in an error's CONTEXT; the
# trusted edition's PL/pgSQL and SQL functions each leave one ("PL/pgSQL
# function entitlock.x(...) line N at RAISE"), with the statement that
# called the next one ('SQL statement "SELECT entitlock._y(...)"').  Those
# frames are the only legitimate difference in an error's text, so the
# trusted run drops them and compares the rest with the C edition's
# expected output.  Frames of the test's own functions and DO blocks stay;
# when the first frame goes, the next one becomes the CONTEXT line.
use strict;
use warnings;

my @lines = <STDIN>;
my $i = 0;
while ($i < @lines)
{
	if ($lines[$i] !~ /^CONTEXT:  /)
	{
		print $lines[$i++];
		next;
	}
	# The CONTEXT block: frames until a line that is not one.
	my @frames;
	my $first = 1;
	while ($i < @lines)
	{
		my $l = $lines[$i];
		$l =~ s/^CONTEXT:  // if $first;
		if ($l =~ /^SQL statement "/)
		{
			# may run over several lines, until one ending with a quote
			my $f = $l;
			$i++;
			while ($f !~ /"\n\z/ && $i < @lines) { $f .= $lines[$i++]; }
			push @frames, [ 'stmt', $f ];
		}
		elsif ($l =~ /^(PL\/pgSQL function|SQL function|SQL expression|PL\/pgSQL assignment|COPY |referenced column:)/)
		{
			push @frames, [ 'frame', $l ];
			$i++;
		}
		elsif ($first)
		{
			push @frames, [ 'other', $l ];
			$i++;
		}
		else
		{
			last;
		}
		$first = 0;
	}
	# Drop entitlock's frames and the statements that called them.
	my @keep;
	for (my $k = 0; $k < @frames; $k++)
	{
		my ($kind, $text) = @{ $frames[$k] };
		next if $kind eq 'frame' && $text =~ /^(PL\/pgSQL|SQL) function "?entitlock\./;
		if ($kind eq 'stmt' && $k + 1 < @frames
			&& $frames[ $k + 1 ][1] =~ /^(PL\/pgSQL|SQL) function "?entitlock\./)
		{
			next;
		}
		# an expression evaluated inside entitlock's function
		if ($kind eq 'frame' && $text =~ /^(SQL expression|PL\/pgSQL assignment)/
			&& $k + 1 < @frames
			&& $frames[ $k + 1 ][1] =~ /^(PL\/pgSQL|SQL) function "?entitlock\./)
		{
			next;
		}
		push @keep, $text;
	}
	next unless @keep;
	print 'CONTEXT:  ' . shift(@keep);
	print for @keep;
}
