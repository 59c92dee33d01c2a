"""Pages and plain-words descriptions for people: the analyst's query report, the
approver's template review, and the text `template show` prints."""
