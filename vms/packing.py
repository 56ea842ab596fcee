"""The N+1 check's packing with one size left open: for which sizes of a new VM does it still hold?

The check (vms/placement.py, `Cluster.shortfalls`) packs a failed server's guests first-fit, largest
first, into the other servers' free memory, rooms taken largest first. A new VM of `x` MiB on server T
changes two packings: T's own (one more guest, of `x`) and every other server's (T's room is `x`
smaller). First fit is not monotonic in a size: a larger guest, or a smaller room, can change where
the guests after it land, and so a packing that fails at `x` may succeed at `x + 1`. Trying sizes
one by one, or a binary search that assumes monotonicity, is slow or wrong; instead the packing runs
once over a range of sizes: every size-dependent comparison ("does this guest fit in this room?") is
`x <= threshold` for the linear sizes involved, so a range splits in two at most at each comparison,
and the ranges are walked from the smallest size up until one fails.

A size is a pair (constant, slope): its value at `x` is `constant + slope * x`. Guests have slope 0,
or 1 for the new VM; rooms 0, or -1 for T's room and for a room that took the new VM. A failed
range fails for every size in it (the packing did the same things there), so the first size that
fails is the range's lower end. Another server's packing that never reaches T's room as things stand
(`reach`) cannot feel the new VM: T's room only shrinks and moves back in first fit's order.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

Size = tuple[int, int]  # (constant, slope): constant + slope * x
# A range of sizes still to pack: (lo, hi, next guest, first room to try, rooms, their slopes, rooms changed).
_Pending = tuple[int, int, int, int, list[int], dict[int, int], set[int]]


def _best(rooms: list[int], slopes: dict[int, int], touched: set[int], hi: int) -> int:
    """The largest room at the range's top end, where every room is at its smallest (rooms only shrink
    as x grows): no room is smaller anywhere in the range. The rooms untouched so far keep first
    fit's order, largest first, so only the first of them counts."""
    first = 0
    while first in touched:
        first += 1
    best = rooms[first] if first < len(rooms) else -1
    for j in touched:
        best = max(best, rooms[j] + slopes.get(j, 0) * hi)
    return best


def _first_failure(guests: list[Size], rooms: list[int], slopes: dict[int, int], lo: int, hi: int) -> int | None:
    """The smallest `x` in [lo, hi] for which first fit, in these orders, leaves a guest without a room.
    Room j is `rooms[j] + slopes.get(j, 0) * x`; the rooms come largest first over the whole range."""
    # What the guests still to place need in all, from guest i on (a linear size too).
    rest: list[Size] = [(0, 0)] * (len(guests) + 1)
    for i in range(len(guests) - 1, -1, -1):
        rest[i] = (rest[i + 1][0] + guests[i][0], rest[i + 1][1] + guests[i][1])
    # Ranges still to pack, the smallest on top.
    pending: list[_Pending] = [(lo, hi, 0, 0, list(rooms), dict(slopes), set(slopes))]
    while pending:
        lo, hi, i, j, rooms, slopes, touched = pending.pop()
        best = _best(rooms, slopes, touched, hi)
        while i < len(guests):
            # Every guest left fits in one room: first fit places them all (that room keeps room for
            # what is left whichever rooms the guests go to). The check's own shortcut.
            if rest[i][0] + rest[i][1] * hi <= best:
                break
            size, grows = guests[i]
            while j < len(rooms):
                # The room left after the guest, spare + slope * x: it fits while that is not negative.
                spare, slope = rooms[j] - size, slopes.get(j, 0) - grows
                if slope == 0:
                    if spare >= 0:
                        break
                elif spare // -slope >= hi:  # slope < 0: rooms only shrink as x grows, guests only grow
                    break
                elif spare // -slope >= lo:
                    # Up to that x the guest goes here; above it, first fit tries the next rooms.
                    pending.append((spare // -slope + 1, hi, i, j + 1, list(rooms), dict(slopes), set(touched)))
                    hi = spare // -slope
                    break
                j += 1
            else:
                return lo  # no room for this guest anywhere, for every x in [lo, hi]
            was_best = rooms[j] + slopes.get(j, 0) * hi >= best
            rooms[j] = spare
            touched.add(j)
            if slope:
                slopes[j] = slope
            if was_best:
                best = _best(rooms, slopes, touched, hi)
            i, j = i + 1, 0
    return None


def reach(guests: list[int], rooms: list[int]) -> int | None:
    """How far first fit goes: the index of the last room in `rooms` (in first fit's order, largest
    first) that any of these guests (largest first) is put in, or None when one finds no room. A room
    after that index is never looked at: shrinking it, or moving it further back, changes nothing
    (-1: no guests, no room used)."""
    left, furthest = list(rooms), -1
    for size in sorted(guests, reverse=True):
        fit = next((j for j, mib in enumerate(left) if mib >= size), None)
        if fit is None:
            return None
        left[fit] -= size
        furthest = max(furthest, fit)
    return furthest


def _ranges(lo: int, hi: int, starts: list[int]) -> Iterator[tuple[int, int]]:
    """[lo, hi] cut before each of `starts`, in order (nothing if the range is empty)."""
    if lo > hi:
        return
    for start in sorted(set(starts)):
        if lo < start <= hi:
            yield lo, start - 1
            lo = start
    yield lo, hi


def first_size_without_room_for_own_guests(guests: list[int], rooms: list[int], lo: int, hi: int) -> int | None:
    """The smallest size `x` in [lo, hi] for which these guests and a new one of `x` MiB do not all fit
    first-fit (largest guest first) into `rooms` (the other servers' free memory), or None."""
    guests, rooms = sorted(guests, reverse=True), sorted(rooms, reverse=True)
    total, largest = sum(guests), rooms[0] if rooms else -1
    top = min(hi, largest)  # a new guest larger than every room has nowhere to go
    # Where the new guest sorts depends on x: it comes after the guests larger than x (a guest of the
    # same size packs the same whichever comes first).
    for low, high in _ranges(lo, top, guests):
        if total + high <= largest:
            continue  # they all fit in the largest room: the check's shortcut
        larger = sum(1 for size in guests if size > low)
        ordered = [(size, 0) for size in guests[:larger]] + [(0, 1)] + [(size, 0) for size in guests[larger:]]
        failed = _first_failure(ordered, rooms, {}, low, high)
        if failed is not None:
            return failed
    return max(lo, top + 1) if top < hi else None


def first_size_without_room_for_others(guests: list[int], rooms: list[int], shrinking: int, lo: int,
                                       hi: int) -> int | None:
    """The smallest size `x` in [lo, hi] for which these guests do not all fit first-fit (largest first)
    into `rooms` and one more room of `shrinking - x` MiB (the new VM's server, after it), or None."""
    total = sum(guests)
    rooms = sorted(rooms, reverse=True)
    if not guests or (rooms and total <= rooms[0]):
        return None  # they all fit in the largest room whatever x is: the check's shortcut
    lo = max(lo, shrinking - total + 1)  # below, they all fit in the shrinking room
    furthest = reach(guests, rooms)
    if furthest is not None:
        # They fit in the other rooms; once the shrinking room sorts after the last of those they
        # use, first fit never looks at it again.
        hi = min(hi, shrinking - rooms[furthest] - 1)
    ordered = [(size, 0) for size in sorted(guests, reverse=True)]
    # Where the shrinking room sorts among the others depends on x: it comes after the rooms larger
    # than it, which are more as x grows (a room of the same size packs the same either way).
    for low, high in _ranges(lo, hi, [shrinking - mib + 1 for mib in rooms]):
        larger = sum(1 for mib in rooms if mib > shrinking - low)
        failed = _first_failure(ordered, [*rooms[:larger], shrinking, *rooms[larger:]], {larger: -1}, low, high)
        if failed is not None:
            return failed
    return None


def largest_new_vms(free: Mapping[int, int], carried: Mapping[int, int], guests: Mapping[int, list[int]],
                    servers: Iterable[int]) -> dict[int, int]:
    """For each of `servers`, the largest new VM (MiB) such that it, or any smaller one, placed there
    keeps N+1 as the allocator's check packs it: every up server's room (`free`), the memory each
    carries, and its guests' sizes. The same first-fit packing with the size left open: one pass per
    server (vms/placement.py `Cluster.largest_new_vms`)."""
    # First fit's order of the rooms (ties by pk) and, for each server that might fail, how far its
    # guests' packing into the others goes as things stand: a new VM shrinks its server's room and
    # moves it back in that order, so only the servers whose packing reaches that room can feel it.
    order = sorted(free, key=lambda pk: (-free[pk], pk))
    frees = [free[pk] for pk in order]
    position = {pk: i for i, pk in enumerate(order)}

    def fit_in_one_room(failed: int, *without: int) -> bool:
        """All of its guests fit in the roomiest of the others: first fit puts them all there."""
        roomiest = next((free[pk] for pk in order if pk != failed and pk not in without), None)
        return roomiest is not None and carried[failed] <= roomiest

    felt_by: dict[int, list[int]] = {pk: [] for pk in guests}
    for failed in guests:
        i = position[failed]
        furthest = 0 if fit_in_one_room(failed) else reach(guests[failed], frees[:i] + frees[i + 1:])
        reached = order[:i] + order[i + 1:] if furthest is None else \
            [pk for pk in order[:furthest + 2] if pk != failed][:furthest + 1]
        for pk in reached:
            felt_by[pk].append(failed)

    def rooms_but(*pks: int) -> list[int]:
        """The rooms of every up server but these, in first fit's order."""
        rooms = frees
        for i in sorted((position[pk] for pk in pks), reverse=True):
            rooms = rooms[:i] + rooms[i + 1:]
        return rooms

    largest = {}
    for target in servers:
        room = free[target]
        if room <= 0:
            largest[target] = 0
            continue
        own = first_size_without_room_for_own_guests(guests[target], rooms_but(target), 1, room)
        first_break = room + 1 if own is None else own
        for failed in felt_by[target]:
            if fit_in_one_room(failed, target):
                continue
            theirs = first_size_without_room_for_others(guests[failed], rooms_but(failed, target), room, 1,
                                                        first_break - 1)
            first_break = first_break if theirs is None else theirs
        largest[target] = first_break - 1
    return largest
