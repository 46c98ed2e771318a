//! The stage graph: edges run from a needed stage to the stage that needs it.
//! Gives a deterministic topological order, names cycles, and renders text/dot.

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

/// A DAG over stage indices (positions in `Pipeline::stages`).
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<usize, ()>,
    order: Vec<usize>,
}

/// A dependency cycle, as the stage indices along it (first repeated at the end).
#[derive(Debug)]
pub struct Cycle(pub Vec<usize>);

impl Dag {
    /// `needs[i]` lists the indices stage `i` depends on.
    pub fn new(needs: &[Vec<usize>]) -> Result<Dag, Cycle> {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..needs.len()).map(|i| graph.add_node(i)).collect();
        for (stage, deps) in needs.iter().enumerate() {
            for &dep in deps {
                graph.add_edge(nodes[dep], nodes[stage], ());
            }
        }
        match toposort(&graph, None) {
            Ok(order) => Ok(Dag {
                order: order.into_iter().map(|n| graph[n]).collect(),
                graph,
            }),
            Err(cycle) => Err(Cycle(find_cycle(&graph, cycle.node_id()))),
        }
    }

    /// Stages in an order where every stage comes after all it needs.
    pub fn topological(&self) -> &[usize] {
        &self.order
    }

    /// Direct dependencies of `stage`.
    pub fn needs(&self, stage: usize) -> Vec<usize> {
        let mut deps: Vec<usize> = self
            .graph
            .edges_directed(NodeIndex::new(stage), petgraph::Direction::Incoming)
            .map(|e| self.graph[e.source()])
            .collect();
        deps.sort_unstable();
        deps
    }

    /// Direct dependents of `stage`.
    pub fn dependents(&self, stage: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .graph
            .edges_directed(NodeIndex::new(stage), petgraph::Direction::Outgoing)
            .map(|e| self.graph[e.target()])
            .collect();
        out.sort_unstable();
        out
    }

    /// `stage` and everything downstream of it.
    pub fn descendants(&self, stage: usize) -> Vec<usize> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack = vec![stage];
        while let Some(s) = stack.pop() {
            if !std::mem::replace(&mut seen[s], true) {
                stack.extend(self.dependents(s));
            }
        }
        (0..seen.len()).filter(|&i| seen[i]).collect()
    }

    /// `stage` and everything it transitively needs.
    pub fn ancestors(&self, stage: usize) -> Vec<usize> {
        let mut seen = vec![false; self.graph.node_count()];
        let mut stack = vec![stage];
        while let Some(s) = stack.pop() {
            if !std::mem::replace(&mut seen[s], true) {
                stack.extend(self.needs(s));
            }
        }
        (0..seen.len()).filter(|&i| seen[i]).collect()
    }
}

/// Walk the strongly connected component holding `start` to one concrete cycle.
fn find_cycle(graph: &DiGraph<usize, ()>, start: NodeIndex) -> Vec<usize> {
    let component = tarjan_scc(graph)
        .into_iter()
        .find(|scc| scc.contains(&start))
        .unwrap_or_else(|| vec![start]);
    let mut path = vec![start];
    let mut current = start;
    loop {
        // Inside an SCC every node has a successor in the SCC; prefer the way back to start.
        let mut successors: Vec<NodeIndex> = graph
            .neighbors(current)
            .filter(|n| component.contains(n))
            .collect();
        successors.sort_by_key(|n| (*n != start, graph[*n]));
        let Some(&next) = successors.first() else {
            break;
        };
        if let Some(pos) = path.iter().position(|&n| n == next) {
            path.drain(..pos);
            path.push(next);
            break;
        }
        path.push(next);
        current = next;
    }
    // Start at the first stage (by position) so the message is stable.
    let mut cycle: Vec<usize> = path.into_iter().map(|n| graph[n]).collect();
    cycle.pop();
    if let Some(min) = cycle
        .iter()
        .enumerate()
        .min_by_key(|(_, s)| **s)
        .map(|(i, _)| i)
    {
        cycle.rotate_left(min);
    }
    if let Some(&first) = cycle.first() {
        cycle.push(first);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_dependencies_first() {
        let dag = Dag::new(&[vec![1], vec![], vec![0, 1]]).expect("acyclic");
        let pos = |s| dag.topological().iter().position(|&x| x == s).unwrap();
        assert!(pos(1) < pos(0) && pos(0) < pos(2));
        assert_eq!(dag.descendants(1), vec![0, 1, 2]);
        assert_eq!(dag.ancestors(2), vec![0, 1, 2]);
        assert_eq!(dag.ancestors(0), vec![0, 1]);
    }

    #[test]
    fn names_the_cycle() {
        // 0 -> 1 -> 2 -> 0, and 3 hangs off 2.
        let Cycle(path) = Dag::new(&[vec![2], vec![0], vec![1], vec![2]]).unwrap_err();
        assert_eq!(path.first(), path.last());
        let mut members = path[..path.len() - 1].to_vec();
        members.sort_unstable();
        assert_eq!(members, vec![0, 1, 2]);
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let Cycle(path) = Dag::new(&[vec![0]]).unwrap_err();
        assert_eq!(path, vec![0, 0]);
    }
}
