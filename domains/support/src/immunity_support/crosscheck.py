"""Cross-check of lookups' own arithmetic: an order whose total is not the sum of its line items
(plus shipping and tax, minus discounts) is a wrong-but-plausible output; refunding or quoting it
would pass every other check. See :mod:`immunity.consistency`."""

from __future__ import annotations

from immunity.consistency import INCONSISTENT_OUTPUT, make_check

#: Lookups whose results carry totals and line items.
ORDER_LOOKUPS = r"(get|lookup|fetch|find)_(order|invoice|order_details|invoice_details|cart)\w*|order_details"

order_totals = make_check(ORDER_LOOKUPS, name="order_totals")

CROSS_CHECKS = [order_totals]
ERROR_CLASSES = {INCONSISTENT_OUTPUT: "order_totals: an order lookup whose total is not the sum of its line items "
                                      "(a wrong-but-plausible output)"}
