set terminal svg size 1100,500 dynamic background rgb "white"
set datafile separator whitespace
set output "docs/evaluation/trace-volume/intensity.svg"
set title "Grid intensity and the variant the heuristic (whole-trace window) chose"
set xdata time; set timefmt "%Y-%m-%dT%H:%M"; set format x "%d %b"; set autoscale xfixmin; set autoscale xfixmax
set key outside bottom center horizontal
set ylabel "gCO2/kWh"; set y2label "variant"; set y2range [-0.5:4]
set y2tics ("resnet34" 0, "resnet50" 1, "resnet101" 2, "resnet152" 3)
plot "docs/evaluation/trace-volume/choices.dat" using 1:2 with lines lw 1 title "intensity", \
     "docs/evaluation/trace-volume/choices.dat" using 1:4 axes x1y2 with steps lw 1 title "variant (heuristic, whole-trace)"
unset xdata; unset y2tics; unset y2label; unset y2range; set format x "%g"; unset key
set output "docs/evaluation/trace-volume/efficiency.svg"
set title "Carbon-emission efficiency vs resnet50 (relative quality improvement % per extra gram)"
set style fill solid 0.6; set boxwidth 0.6; set ylabel "%/g"; set xtics rotate by -20
plot "docs/evaluation/trace-volume/efficiency.dat" using 0:2:xtic(1) with boxes notitle
set output "docs/evaluation/trace-volume/frontier.svg"
set style fill empty; set xtics norotate; set key inside top right vertical
set title "Mean top-1 error against extra grams over resnet50, the whole month"
set xlabel "extra g CO2 vs resnet50"; set ylabel "mean top-1 error %"
plot "docs/evaluation/trace-volume/frontier.dat" using 4:5 with linespoints lw 2 title "hindsight optimum (bound)", \
     "docs/evaluation/trace-volume/frontier.dat" using 2:3 with linespoints lw 2 title "accuracy-target (online)", \
     "docs/evaluation/trace-volume/frontier_heuristics.dat" using 2:3 with points pt 9 ps 1.5 title "the paper's heuristic (three windows)", \
     "docs/evaluation/trace-volume/frontier_points.dat" using 2:3 with points pt 7 ps 1.2 title "fixed variants", \
     "docs/evaluation/trace-volume/frontier_points.dat" using 2:3:1 with labels offset 0,1 font ",9" notitle
