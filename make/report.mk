# Did it reproduce? (issue 17) The paper's numbers beside ours, its claims checked, every figure on one page.
#   make report PROFILE=demo   reads what exists under $(RS) (SET="seeds=0,1": every seed's, SRS); writes $(A)/report/$(PROFILE)/{REPRODUCTION.md,index.html}
# Missing results become "not run" rows naming their make target; the report itself never needs them.
.PHONY: report
report: $(STAMP) ## did it reproduce: the paper's numbers beside ours, every figure on one page
	@$(PY) -m experiments.report $(PROFLAGS) --results $(SRS) --figures $(FG) --out $(call p_report,$(PDIR))
